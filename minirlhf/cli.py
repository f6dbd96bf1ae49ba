"""The `minirlhf` command.

Usage:
    minirlhf run --config configs/demo.yaml [--set ppo.kl_coef=0.02] [--stages sft,reward]
    minirlhf data preview [--config configs/demo.yaml] [-n 8]
    minirlhf query "select name, value from metrics where name like 'reward/%'" [--format table|csv|json]
    minirlhf query --file dashboards/queries/runs.sql
    minirlhf config show --config configs/demo.yaml
    minirlhf report [--output-dir artifacts] [--run <run_id>] [--sweep-run <run_id>]   # artifacts/report/report.md
    minirlhf dashboard [--db artifacts/rlhf.duckdb] [--port 8501]   # http://localhost:8501/?page=runs&run=<run_id>

Queries open the store read-only: a write or DDL statement is refused and changes nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

# The default path is offline: nothing downloads weights or data unless the user lifts these.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="minirlhf: a small, real RLHF pipeline.")
data_app = typer.Typer(no_args_is_help=True, help="Look at the training data.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configurations.")
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: the built-in defaults, the same as configs/demo.yaml)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override: section.field=value (repeatable)")]


def _load(config: Path | None, overrides: list[str] | None):
    from minirlhf.config import ConfigError, load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        err_console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


@app.command()
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    stages: Annotated[Optional[str], typer.Option(help="comma-separated stages, upstream ones run or reused (default: every "
                                                  "enabled stage: data,sft,reward,ppo,dpo,rloo,eval)")] = None,
) -> None:
    """Run the pipeline stages on a config, skipping stages whose output is already complete."""
    import time

    from minirlhf.pipeline import run_pipeline

    cfg = _load(config, set_)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()

    def report(name, result):
        how = "reused (complete output on disk)" if result.cache_hit else f"{result.seconds:.1f} s"
        console.print(f"[bold green]✓ {name}[/bold green] {how} → {result.path(cfg.output_dir)}")

    try:
        asked = tuple(s.strip() for s in stages.split(",") if s.strip()) if stages else None
        results = run_pipeline(cfg, asked, on_stage=report)
    except (FileNotFoundError, ValueError) as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from None
    print_results(cfg, results, time.perf_counter() - started)


def print_results(cfg, results: dict, seconds: float) -> None:
    """The headline metrics of a finished run and where its store is (shared with `minirlhf flow`)."""
    table = Table(title=f"minirlhf run '{cfg.name}' in {seconds:.1f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for result in results.values():
        for name, value in result.metrics.items():
            if "/accuracy/" not in name:
                table.add_row(name, f"{value:.4g}")
    console.print(table)
    console.print(f"store: {Path(cfg.output_dir) / 'rlhf.duckdb'}  (try: minirlhf query \"select * from metrics\")")


@data_app.command("preview")
def data_preview(config: ConfigOpt = None, set_: SetOpt = None, n: Annotated[int, typer.Option("-n")] = 8) -> None:
    """Render a few SFT demonstrations and preference pairs with their gold scores."""
    import random

    from minirlhf.data.gold import gold_score
    from minirlhf.data.task import _pair, _sft_example

    cfg = _load(config, set_)
    if cfg.data.source != "embedded":
        err_console.print("data preview shows the embedded task; for HH data run the data stage and read its files")
        raise typer.Exit(2)
    rng = random.Random(f"{cfg.data.seed}-preview")
    table = Table(title="SFT demonstrations", show_lines=True)
    for col in ("intent", "prompt", "response", "gold"):
        table.add_column(col)
    for _ in range(n):
        ex = _sft_example(rng, cfg.data)
        table.add_row(ex["intent"], ex["prompt"].strip(), ex["completion"].strip(), f"{ex['gold']:+.2f}")
    console.print(table)
    pairs = Table(title="Preference pairs (labels drawn from gold by a noisy Bradley-Terry model)", show_lines=True)
    for col in ("prompt", "chosen", "gold", "rejected", "gold "):
        pairs.add_column(col)
    for _ in range(max(1, n // 2)):
        p = _pair(rng, cfg.data)
        assert abs(gold_score(p["prompt"], p["chosen"]).total - p["gold_chosen"]) < 1e-9
        pairs.add_row(p["prompt"].strip(), p["chosen"].strip(), f"{p['gold_chosen']:+.2f}", p["rejected"].strip(), f"{p['gold_rejected']:+.2f}")
    console.print(pairs)


@app.command()
def query(
    sql: Annotated[Optional[str], typer.Argument(help="SQL to run (read-only)")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="read the SQL from a file")] = None,
    db: Annotated[Optional[Path], typer.Option(help="DuckDB file (default: <output_dir>/rlhf.duckdb)")] = None,
    output_dir: Annotated[Path, typer.Option(help="output root holding rlhf.duckdb")] = Path("artifacts"),
    format: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
) -> None:
    """Run a read-only SQL query on the results store."""
    from minirlhf.store import ReadOnlyQueryError, Store

    if (sql is None) == (file is None):
        err_console.print("give the SQL as an argument or with --file, not both")
        raise typer.Exit(2)
    if format not in ("table", "csv", "json"):
        err_console.print(f"--format must be table, csv or json (got {format!r})")
        raise typer.Exit(2)
    text = sql if sql is not None else file.read_text()
    try:
        frame = Store(db or output_dir / "rlhf.duckdb").query(text)
    except (ReadOnlyQueryError, FileNotFoundError) as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from None
    except Exception as err:  # a SQL error from DuckDB: show it plainly, no traceback
        err_console.print(f"[red]query failed:[/red] {err}")
        raise typer.Exit(1) from None
    if format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif format == "json":
        sys.stdout.write(frame.to_json(orient="records", indent=1) + "\n")
    else:
        table = Table()
        for col in frame.columns:
            table.add_column(str(col))
        for row in frame.itertuples(index=False):
            table.add_row(*(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row))
        console.print(table)


@app.command()
def report(
    output_dir: Annotated[Path, typer.Option(help="output root holding rlhf.duckdb")] = Path("artifacts"),
    db: Annotated[Optional[Path], typer.Option(help="DuckDB file (default: <output_dir>/rlhf.duckdb)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="report folder (default: <output_dir>/report)")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run", help="run to report (default: the newest evaluated run)")] = None,
    sweep_run: Annotated[Optional[str], typer.Option(help="sweep run to show (default: the newest sweep)")] = None,
    samples: Annotated[int, typer.Option("--samples", "-n", min=1, help="prompts shown side by side")] = 6,
) -> None:
    """Write a markdown report with figures (report.md, figures/*.png) from the results store, read-only."""
    from minirlhf.report import ReportError, build_report
    from minirlhf.store import StoreLocked

    try:
        path = build_report(db or output_dir / "rlhf.duckdb", out or output_dir / "report", run_id=run_id,
                            sweep_run_id=sweep_run, n_samples=samples)
    except (ReportError, StoreLocked) as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from None
    typer.echo(str(path))  # plain: scripts read it


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the full, validated config (defaults filled in) as YAML."""
    import yaml

    cfg = _load(config, set_)
    console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


DASHBOARD_APP = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"


@app.command()
def dashboard(
    db: Annotated[Optional[Path], typer.Option(help="DuckDB file (default: <output_dir>/rlhf.duckdb)")] = None,
    output_dir: Annotated[Path, typer.Option(help="output root holding rlhf.duckdb")] = Path("artifacts"),
    port: Annotated[int, typer.Option(help="port to serve on")] = 8501,
    address: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: your network)")] = "localhost",
) -> None:
    """Serve the dashboard (Streamlit) on the results store, read-only: http://<address>:<port>/?page=runs."""
    if not DASHBOARD_APP.is_file():
        err_console.print(f"[red]error:[/red] {DASHBOARD_APP} is missing: the dashboard ships with the source "
                          "checkout, install minirlhf from it with `pip install -e .`")
        raise typer.Exit(1)
    path = (db or output_dir / "rlhf.duckdb").resolve()
    if not path.is_file():
        console.print(f"[yellow]no results store at {path} yet[/yellow]: the dashboard will say so until a run "
                      "writes one (`make demo`)")
    console.print(f"dashboard on http://{address}:{port}/  (store: {path}; Ctrl-C stops it)")
    command = [sys.executable, "-m", "streamlit", "run", str(DASHBOARD_APP), "--server.port", str(port),
               "--server.address", address, "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    sys.stdout.flush()
    # Become the Streamlit server (no child process): Ctrl-C and SIGTERM reach it directly, nothing is orphaned.
    os.execve(sys.executable, command, {**os.environ, "MINIRLHF_DB": str(path)})


def main() -> None:
    app()


if __name__ == "__main__":
    main()
