"""The `minirlhf` command: the library's commands (minirlhf/cli.py) plus those that need Prefect.

Usage:
    minirlhf flow [--config configs/demo.yaml] [--set ppo.kl_coef=0.1]   # the pipeline as a Prefect flow
    minirlhf sweep [--config ...] [--kl-coefs 0.5,0.2,0.1,0.05]           # the over-optimisation sweep flow
    minirlhf serve [--config ...] [--cron "0 3 * * *"]                   # a deployment served by this process
    minirlhf run | query | report | ...                                    # see `minirlhf --help`

`make demo` is `minirlhf flow --config configs/demo.yaml`: every stage a cached Prefect task, so a second
`make demo` answers every stage from the cache. Without PREFECT_API_URL the flow runs against a temporary
local Prefect server; with it (after `prefect server start`), the run shows in the Prefect UI.
The commands live here, not in minirlhf/cli.py, because the library never imports Prefect
(flows -> tasks -> minirlhf); pyproject.toml points the `minirlhf` script at this module.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Optional

# The library's log lines (stage starts, reuse, PPO progress) in the flow run's logs; read at Prefect's import.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "minirlhf")

import typer  # noqa: E402

from minirlhf.cli import ConfigOpt, SetOpt, _load, app, console, err_console, print_results  # noqa: E402

SERVE_NAME = "rlhf-serve"


@app.command()
def flow(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run the whole pipeline as the Prefect flow `rlhf-pipeline` (cached stage tasks, PPO retries)."""
    from flows.pipeline import rlhf_pipeline

    cfg = _load(config, set_)
    started = time.perf_counter()
    state = rlhf_pipeline(cfg, return_state=True)
    if not state.is_completed():
        err_console.print(f"[red]flow run {state.state_details.flow_run_id} ended {state.name}:[/red] {state.message}")
        raise typer.Exit(1)
    results = state.result()
    for name, result in results.items():
        how = "Cached (reused)" if result.cache_hit else f"{result.seconds:.1f} s"
        console.print(f"[bold green]✓ {name}[/bold green] {how} → {result.path(cfg.output_dir)}")
    print_results(cfg, results, time.perf_counter() - started)


@app.command()
def sweep(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    kl_coefs: Annotated[str, typer.Option(help="comma-separated ppo.kl_coef values, one PPO run each")] = "0.5,0.2,0.1,0.05,0.02,0.01",
) -> None:
    """The over-optimisation sweep (Prefect flow `overoptimization-sweep`): PPO at several KL coefficients on the
    same cached SFT and reward model; gold and proxy reward against d = sqrt(KL), fitted as in Gao et al. 2022."""
    from flows.sweep import overoptimization_sweep

    try:
        coefs = [float(c) for c in kl_coefs.split(",") if c.strip()]
    except ValueError:
        err_console.print(f"[red]--kl-coefs must be numbers separated by commas, e.g. 0.2,0.05 (got {kl_coefs!r})[/red]")
        raise typer.Exit(2) from None
    if len(set(coefs)) < 2 or any(c < 0 for c in coefs):
        err_console.print(f"[red]--kl-coefs needs at least two different non-negative values (got {kl_coefs!r})[/red]")
        raise typer.Exit(2)
    cfg = _load(config, set_)
    started = time.perf_counter()
    state = overoptimization_sweep(cfg, kl_coefs=coefs, return_state=True)
    if not state.is_completed():
        err_console.print(f"[red]sweep flow run {state.state_details.flow_run_id} ended {state.name}:[/red] {state.message}")
        raise typer.Exit(1)
    result = state.result()
    for name, value in sorted(result.metrics.items()):
        console.print(f"{name} = {value:.4g}")
    console.print(f"[bold green]✓ sweep[/bold green] {time.perf_counter() - started:.1f} s → {result.path(cfg.output_dir)}/overoptimization.png")


@app.command()
def serve(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    cron: Annotated[Optional[str], typer.Option(help="also run on this cron schedule (UTC), e.g. '0 3 * * *'")] = None,
    name: Annotated[str, typer.Option(help="deployment name")] = SERVE_NAME,
) -> None:
    """Serve the flow as a deployment from this process: trigger runs from the Prefect UI (no work pool or
    worker needed). Start `prefect server start` first and set PREFECT_API_URL, as the README shows."""
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import rlhf_pipeline

    if not PREFECT_API_URL.value():
        err_console.print("[red]serve needs a Prefect server:[/red] run `prefect server start` in another terminal, then "
                          "`export PREFECT_API_URL=http://127.0.0.1:4200/api` and try again.")
        raise typer.Exit(2)
    cfg = _load(config, set_)
    console.print(f"serving rlhf-pipeline/{name} with config '{cfg.name}' (Ctrl-C stops; "
                  f"`prefect deployment run rlhf-pipeline/{name}` or the UI's Run button starts a run)")
    rlhf_pipeline.serve(name=name, parameters={"config": cfg.model_dump(mode="json")}, cron=cron,
                        tags=["minirlhf", "served"], description="The RLHF pipeline served by `minirlhf serve`.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
