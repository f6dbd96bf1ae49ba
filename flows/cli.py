"""The `minirlhf` command: the library's commands (minirlhf/cli.py) plus those that need Prefect.

Usage:
    minirlhf flow [--config configs/demo.yaml] [--set ppo.kl_coef=0.1]   # the pipeline as a Prefect flow
    minirlhf sweep [--config ...] [--kl-coefs 0.5,0.2,0.1,0.05]           # the over-optimisation sweep flow
    minirlhf calibrate --config configs/calibration.yaml                  # the reward-hacking calibration flow
    minirlhf compare [--config ...] [--seeds 1,2,3] [--vary-all]          # the methods over seeds, with intervals
    minirlhf serve [--config ...] [--cron "0 3 * * *"]                   # a deployment served by this process
    minirlhf run | query | report | ...                                    # see `minirlhf --help`
    minirlhf flow --verbose     # every library warning and bar, Prefect's INFO lines (default: the UI's logs only)

`make demo` is `minirlhf flow --config configs/demo.yaml`: every stage a cached Prefect task, so a second
`make demo` answers every stage from the cache. Without PREFECT_API_URL the flow runs against a local Prefect
server on 127.0.0.1:4200, started in the background by the first run and left running for the next ones and
for its UI (flows/server.py; `prefect server stop` stops it); `--ephemeral` uses Prefect's temporary
per-run server instead. With PREFECT_API_URL set, the flow runs against that server.
The commands live here, not in minirlhf/cli.py, because the library never imports Prefect
(flows -> tasks -> minirlhf); pyproject.toml points the `minirlhf` script at this module.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Annotated, Optional

# The library's log lines (stage starts, reuse, PPO progress) in the flow run's logs; read at Prefect's import.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "minirlhf")
# The temporary server Prefect starts without PREFECT_API_URL gets 20 s by default: too few on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import typer  # noqa: E402

from minirlhf.cli import (  # noqa: E402
    ConfigOpt, SetOpt, VerboseOpt, _load, app, check_before_run, console, err_console, print_results)
from minirlhf.console import SummarisedFilter, is_verbose, next_commands, set_verbose  # noqa: E402
from minirlhf.errors import UserError  # noqa: E402

SERVE_NAME = "rlhf-serve"
RunnerOpt = Annotated[Optional[str], typer.Option(
    "--runner", help="where stage tasks run: local (this process, one after another; the default) or ray "
                     "(Prefect's RayTaskRunner: independent stages at once; README 'Scaling out')")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="with --runner ray: auto (the instance `ray start --head` runs here), ray://<head>:10001 "
                          "or <head>:6379; default: a local Ray instance for this run")]
EphemeralOpt = Annotated[bool, typer.Option(
    "--ephemeral", help="run against Prefect's temporary per-run server instead of the local one on 127.0.0.1:4200 "
                        "(slower: it starts at every run)")]


def choose_server(ephemeral: bool) -> str | None:
    """Before Prefect's import: the server this process talks to. PREFECT_API_URL wins; else the local server
    (started if needed), unless --ephemeral. Returns the UI's address, or None for a temporary server."""
    from flows.server import use_local_server

    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"].removesuffix("/api")
    if ephemeral:
        return None
    return use_local_server().removesuffix("/api")


def quiet_prefect_console(verbose: bool) -> None:
    """Called before Prefect is imported (it reads its logging settings then). Unless --verbose, Prefect's console
    handler shows warnings and errors only; its loggers keep their levels, so every INFO line (flow and task run
    states, the library's own lines) still reaches the API handler: the flow run's logs in the UI keep every
    detail. (PREFECT_LOGGING_LEVEL would not do: it is the loggers' level, so it would cut what reaches the API too.)
    MINIRLHF_VERBOSE carries --verbose into the stage tasks (minirlhf.console)."""
    set_verbose(verbose)
    if not is_verbose():
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        # offline, its telemetry fails in ERROR lines
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def route_library_logs() -> None:
    """After Prefect's import: the library's INFO lines (a stage computing or reused, PPO resuming) reach the flow
    run's logs, Prefect's console handler leaves out what the summary lists (the eval stage's failure events)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    logging.getLogger("minirlhf").setLevel(logging.INFO)
    if not is_verbose():
        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.addFilter(SummarisedFilter())


def start_flow_command(config, set_, verbose: bool, ephemeral: bool, runner: str | None = None,
                       ray_address: str | None = None):
    """What every command that runs a flow does first: the config loaded and checked (a bad input fails here, in one
    line, before Prefect starts and the store records a run), Prefect's console quietened and its server chosen
    before Prefect is imported. Returns (config, the UI's address or None)."""
    set_ = [*(set_ or []), *([f"runner.kind={runner}"] if runner else []),
            *([f"runner.ray_address={ray_address}"] if ray_address else [])]
    cfg = _load(config, set_)
    if ray_address and cfg.runner.kind != "ray":
        raise UserError("--ray-address needs --runner ray")
    check_before_run(cfg)
    quiet_prefect_console(verbose)
    return cfg, choose_server(ephemeral)


def check_runner(cfg, stages: list[str]) -> None:
    """With --runner ray: connect (or start the local instance) and check the setup before the flow starts, so bad
    setup is one line and no run is recorded; the flow's task runner then joins this Ray instance."""
    if cfg.runner.kind == "ray":
        from flows.ray_runner import start_ray

        start_ray(cfg, stages)


def flow_result(state, what: str):
    """A finished flow's result; a flow run that did not complete ends the command with its state, exit 1."""
    if not state.is_completed():
        err_console.print(f"[red]{what} {state.state_details.flow_run_id} ended {state.name}:[/red] {state.message}")
        raise typer.Exit(1)
    return state.result()


@app.command()
def flow(config: ConfigOpt = None, set_: SetOpt = None, verbose: VerboseOpt = False,
         ephemeral: EphemeralOpt = False, runner: RunnerOpt = None, ray_address: RayAddressOpt = None) -> None:
    """Run the whole pipeline as the Prefect flow `rlhf-pipeline` (cached stage tasks, PPO retries)."""
    cfg, ui = start_flow_command(config, set_, verbose, ephemeral, runner, ray_address)
    from flows.pipeline import rlhf_pipeline
    from minirlhf.pipeline import enabled_stages

    check_runner(cfg, list(enabled_stages(cfg)))

    route_library_logs()
    started = time.perf_counter()
    # each stage prints its progress line, or one line when done
    results = flow_result(rlhf_pipeline(cfg, return_state=True), "flow run")
    print_results(cfg, results, time.perf_counter() - started)
    if ui:
        console.print(f"Prefect UI: {ui}  (the server stays up for the next run; `prefect server stop` stops it)",
                      markup=False, soft_wrap=True)


@app.command()
def sweep(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    kl_coefs: Annotated[str, typer.Option(
        help="comma-separated ppo.kl_coef values, one PPO run each")] = "0.5,0.2,0.1,0.05,0.02,0.01",
    verbose: VerboseOpt = False,
    ephemeral: EphemeralOpt = False,
    runner: RunnerOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """The over-optimisation sweep (Prefect flow `overoptimization-sweep`): PPO at several KL coefficients on the
    same cached SFT and reward model; gold and proxy reward against d = sqrt(KL), fitted as in Gao et al. 2022."""
    try:
        coefs = [float(c) for c in kl_coefs.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--kl-coefs must be numbers separated by commas, e.g. 0.2,0.05 (got {kl_coefs!r})") from None
    if len(set(coefs)) < 2 or any(c < 0 for c in coefs):
        raise UserError(f"--kl-coefs needs at least two different non-negative values (got {kl_coefs!r})")
    cfg, _ = start_flow_command(config, set_, verbose, ephemeral, runner, ray_address)
    from flows.sweep import SHARED_STAGES, overoptimization_sweep

    check_runner(cfg, [*SHARED_STAGES, "ppo", "eval"])

    route_library_logs()
    started = time.perf_counter()
    result = flow_result(overoptimization_sweep(cfg, kl_coefs=coefs, return_state=True), "sweep flow run")
    console.print(f"\n[bold]{cfg.name}[/bold]: sweep over {len(set(coefs))} KL coefficients "
                  f"in {time.perf_counter() - started:.1f} s")
    console.print("fit of the reward gain over SFT, R(d) = d(α - β log d), d = sqrt(KL):")
    for reward in ("gold", "proxy"):
        fit = {k.rsplit("/", 1)[1]: v for k, v in result.metrics.items() if k.startswith(f"sweep/fit/{reward}/")}
        if {"alpha", "beta", "r2"} <= fit.keys():
            peak = f"peak at d = {fit['d_star']:.2f}" if "d_star" in fit else "no peak"
            console.print(f"  {reward:<6} α {fit['alpha']:+.3f}  β {fit['beta']:+.3f}  R² {fit['r2']:.2f}  {peak}")
    console.print(f"figure: {result.path(cfg.output_dir)}/overoptimization.png", markup=False)
    report = next_commands(cfg, None)[1][0]
    console.print(f"next: {report}  # the report, with the sweep's figure and fits", markup=False, soft_wrap=True)


@app.command()
def calibrate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    kl_coefs: Annotated[str, typer.Option(help="comma-separated ppo.kl_coef values")] = "0.5,0.2,0.1,0.05,0.02,0.01",
    seeds: Annotated[str, typer.Option(help="comma-separated ppo.seed values, one PPO run per kl_coef each")] = "1,2,3",
    train_seeds: Annotated[str, typer.Option(help="the seeds thresholds are chosen on, the rest score them "
                                             "(default: leave one seed out)")] = "",
    defence: Annotated[bool, typer.Option(help="also run every point with the defence on")] = True,
    defence_reward: Annotated[str, typer.Option(
        help="what defended points optimise: ensemble_mean_minus_std, ensemble_min, or proxy (rollback alone)")]
    = "ensemble_mean_minus_std",
    verbose: VerboseOpt = False,
    ephemeral: EphemeralOpt = False,
    runner: RunnerOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """The reward-hacking calibration (Prefect flow `hacking-calibration`): PPO at kl_coef x seed watched by the
    gold-free signals; thresholds chosen on some seeds (leave-one-seed-out), recall / false alarms / lead against
    the gold onset on the other seeds; the defence (conservative ensemble reward + rollback) against none."""
    try:
        coefs, seed_list, train = ([float(c) for c in kl_coefs.split(",") if c.strip()],
                                   [int(x) for x in seeds.split(",") if x.strip()],
                                   [int(x) for x in train_seeds.split(",") if x.strip()])
    except ValueError:
        raise UserError("--kl-coefs, --seeds and --train-seeds are comma-separated numbers, "
                        "e.g. --seeds 1,2,3") from None
    if defence_reward not in ("ensemble_mean_minus_std", "ensemble_min", "proxy"):
        raise UserError(f"--defence-reward {defence_reward!r}: choose ensemble_mean_minus_std, ensemble_min or proxy")
    cfg, _ = start_flow_command(config, set_, verbose, ephemeral, runner, ray_address)
    from flows.calibration import SHARED_STAGES, calibration_markdown, hacking_calibration

    check_runner(cfg, [*SHARED_STAGES, "ppo", "eval"])

    route_library_logs()
    started = time.perf_counter()
    result = flow_result(hacking_calibration(cfg, kl_coefs=coefs, seeds=seed_list, train_seeds=train,
                                             defence=defence, defence_reward=defence_reward, return_state=True),
                         "calibration flow run")
    console.print(f"\n[bold]{cfg.name}[/bold]: calibration in {time.perf_counter() - started:.1f} s")
    console.print(calibration_markdown(result), markup=False)
    console.print(f"figure and tables: {result.path(cfg.output_dir)}/", markup=False)


@app.command()
def compare(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seeds: Annotated[str, typer.Option(help="comma-separated seeds, each method trained once from each")] = "1,2,3",
    vary_all: Annotated[bool, typer.Option(help="retrain SFT and the reward model from each seed too")] = False,
    equal_episodes: Annotated[bool, typer.Option(
        help="RLOO and GRPO sample as many episodes as PPO (their steps adjusted)")] = True,
    verbose: VerboseOpt = False,
    ephemeral: EphemeralOpt = False,
    runner: RunnerOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """The comparison of the policy methods (Prefect flow `compare-methods`): PPO, DPO, RLOO and GRPO trained from
    each seed, evaluated on the same prompts; means with 95% paired-bootstrap intervals over seeds and prompts."""
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--seeds is comma-separated integers, e.g. --seeds 1,2,3 (got {seeds!r})") from None
    if len(set(seed_list)) < 2:
        raise UserError(f"--seeds needs at least two different seeds for an interval over seeds (got {seeds!r})")
    cfg, _ = start_flow_command(config, set_, verbose, ephemeral, runner, ray_address)
    from flows.compare import compare_markdown, compare_methods
    from minirlhf.pipeline import enabled_stages

    check_runner(cfg, list(enabled_stages(cfg)))

    route_library_logs()
    started = time.perf_counter()
    result = flow_result(compare_methods(cfg, seeds=seed_list, vary_all=vary_all, equal_episodes=equal_episodes,
                                         return_state=True), "comparison flow run")
    console.print(f"\n[bold]{cfg.name}[/bold]: {len(set(seed_list))} seeds compared in "
                  f"{time.perf_counter() - started:.1f} s")
    console.print(compare_markdown(result), markup=False)


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
        raise UserError("serve needs a Prefect server: run `prefect server start` in another terminal, then "
                        "`export PREFECT_API_URL=http://127.0.0.1:4200/api` and try again.")
    cfg = _load(config, set_)
    console.print(f"serving rlhf-pipeline/{name} with config '{cfg.name}' (Ctrl-C stops; "
                  f"`prefect deployment run rlhf-pipeline/{name}` or the UI's Run button starts a run)")
    rlhf_pipeline.serve(name=name, parameters={"config": cfg.model_dump(mode="json")}, cron=cron,
                        tags=["minirlhf", "served"], description="The RLHF pipeline served by `minirlhf serve`.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
