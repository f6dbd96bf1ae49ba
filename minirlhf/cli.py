"""The `minirlhf` command.

Usage:
    minirlhf run --config configs/demo.yaml [--set ppo.kl_coef=0.02] [--stages sft,reward] [--verbose]
    minirlhf data preview [--config configs/demo.yaml] [-n 8]
    minirlhf query "select name, value from metrics where name like 'reward/%'" [--format table|csv|json]
    minirlhf query --file dashboards/queries/runs.sql [--param run_id=<run_id>]   # $run_id in the SQL
    minirlhf config show --config configs/demo.yaml
    minirlhf report [--output-dir artifacts] [--run <run_id>] [--sweep-run <run_id>]   # artifacts/report/report.md
    minirlhf dashboard [--db artifacts/rlhf.duckdb] [--port 8501]   # http://localhost:8501/?page=runs&run=<run_id>

Queries open the store read-only: a write or DDL statement is refused and changes nothing.
Something the user fixes (a bad config, data file, path or option: minirlhf.errors.UserError) is printed as one
line on stderr and exits with code 2, before anything is written; a bug keeps its traceback.
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
from typer.core import TyperGroup

from minirlhf.errors import MissingInput, UnusableInput, UserError, one_line

# The default path is offline: nothing downloads weights or data unless the user lifts these.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class UserErrorsGroup(TyperGroup):
    """The one place a UserError becomes what the user sees: one line on stderr, exit code 2, no traceback.
    Every command, the sub-apps' and flows/cli.py's included, runs inside the top group's `invoke`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            typer.echo(f"error: {one_line(str(err))}", err=True)  # plain echo: rich would wrap a long line
            raise typer.Exit(2) from None


app = typer.Typer(cls=UserErrorsGroup, add_completion=False, no_args_is_help=True,
                  help="minirlhf: a small, real RLHF pipeline.")
data_app = typer.Typer(no_args_is_help=True, help="Look at the training data.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configurations.")
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # soft_wrap: a message stays one line, as scripts grep it

ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="YAML config (default: the built-in defaults, the same as configs/demo.yaml)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override: section.field=value (repeatable)")]


def _load(config: Path | None, overrides: list[str] | None):
    """The validated config; a ConfigError (a UserError) reaches UserErrorsGroup."""
    from minirlhf.config import load_config

    return load_config(config, overrides or [])


def check_before_run(cfg, stages: tuple[str, ...] | None = None, stages_text: str | None = None) -> list[str]:
    """The stages to run; raises UserError for what would otherwise fail mid-run, before a run is recorded or
    anything written: an unknown stage, an output root that cannot be a writable folder, an HH data file that
    is missing or not JSON Lines text (its key is computed from its content here, as the run will)."""
    from minirlhf.inputs import external_inputs
    from minirlhf.pipeline import needed_stages

    try:
        names = needed_stages(cfg, stages)
    except ValueError as err:  # unknown, disabled or no stages: its message says which and the choices
        raise UserError(f"--stages {stages_text!r}: {err}") from None
    check_output_root(Path(cfg.output_dir))
    if "data" in names:
        external_inputs(cfg, "data")  # MissingInput / UnusableInput for data.hh_path; remembered for the run
    return names


def check_output_root(output_dir: Path) -> None:
    """Raise UserError unless `output_dir` is, or can be created as, a folder this process may write into.
    Creates nothing: its nearest existing part must be a writable folder."""
    path = output_dir.expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    fix = "set output_dir to a folder you can write, e.g. --set output_dir=artifacts"
    if not existing.is_dir():
        raise UserError(f"output_dir {output_dir}: {existing} is not a folder; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output_dir {output_dir}: {existing} is not writable by this user; {fix}")


VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show every library warning, progress bar and log "
                                          "line, as the libraries print them (also: MINIRLHF_VERBOSE=1)")]


@app.command()
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    stages: Annotated[Optional[str], typer.Option(help="comma-separated stages, upstream ones run or reused (default: "
                                                  "every enabled stage, in pipeline order)")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the pipeline stages on a config, skipping stages whose output is already complete."""
    import time

    from minirlhf.console import SummarisedFilter, is_verbose, set_verbose
    from minirlhf.pipeline import run_pipeline

    cfg = _load(config, set_)
    asked = tuple(s.strip() for s in stages.split(",") if s.strip()) if stages is not None else None
    check_before_run(cfg, asked, stages)
    set_verbose(verbose)
    if is_verbose():  # the library's own lines too: a stage computing or reused, PPO resuming
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    elif not logging.getLogger().handlers:  # warnings only; the failure events, which the summary lists, once
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger().handlers[0].addFilter(SummarisedFilter())
    started = time.perf_counter()
    results = run_pipeline(cfg, asked)  # each stage prints its progress line, or one line when done
    print_results(cfg, results, time.perf_counter() - started)


def print_results(cfg, results: dict, seconds: float) -> None:
    """The end of a run (shared with `minirlhf flow`): the policies compared, the failure events, the store and
    the next commands (minirlhf.console.print_summary)."""
    from minirlhf.console import print_summary

    console.print()
    print_summary(cfg, results, seconds, console)


@data_app.command("preview")
def data_preview(config: ConfigOpt = None, set_: SetOpt = None, n: Annotated[int, typer.Option("-n")] = 8) -> None:
    """Render a few SFT demonstrations and preference pairs with their gold scores."""
    import random

    from minirlhf.data.gold import gold_score
    from minirlhf.data.task import _pair, _sft_example

    cfg = _load(config, set_)
    if cfg.data.source != "embedded":
        raise UserError("data preview shows the embedded task; for HH data run the data stage and read its files")
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
        pairs.add_row(p["prompt"].strip(), p["chosen"].strip(), f"{p['gold_chosen']:+.2f}", p["rejected"].strip(),
                      f"{p['gold_rejected']:+.2f}")
    console.print(pairs)


@app.command()
def query(
    sql: Annotated[Optional[str], typer.Argument(help="SQL to run (read-only)")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="read the SQL from a file")] = None,
    db: Annotated[Optional[Path], typer.Option(help="DuckDB file (default: <output_dir>/rlhf.duckdb)")] = None,
    output_dir: Annotated[Path, typer.Option(help="output root holding rlhf.duckdb")] = Path("artifacts"),
    format: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="NAME=VALUE for $NAME in the SQL, "
                                                       "as a string (cast in SQL: $n::INT); repeatable")] = None,
) -> None:
    """Run a read-only SQL query on the results store."""
    from minirlhf.store import NotAStore, ReadOnlyQueryError, Store

    if (sql is None) == (file is None):
        raise UserError("give the SQL as an argument or with --file, not both")
    if format not in ("table", "csv", "json"):
        raise UserError(f"--format must be table, csv or json (got {format!r})")
    text = sql if sql is not None else read_sql_file(file)
    params = parse_params(param or [])
    try:
        frame = Store(db or output_dir / "rlhf.duckdb").query(text, params)
    except NotAStore as err:
        raise not_a_store(err) from None
    except (ReadOnlyQueryError, FileNotFoundError) as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from None
    except Exception as err:  # a SQL error from DuckDB: show it plainly, no traceback
        unbound = parameter_problem(str(err), params)
        if unbound:
            raise UserError(unbound) from None
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


def not_a_store(err: Exception) -> UserError:
    """`query` and `report` on a file that is not DuckDB: the store's message, and which option to change."""
    return UnusableInput(f"{err}; point --db (or --output-dir) at the store a pipeline run wrote")


def read_sql_file(path: Path) -> str:
    """The text of `query --file`, or UserError saying what is wrong with the file."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise MissingInput(f"--file {path} {what}; give a .sql file, e.g. dashboards/queries/runs.sql")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UnusableInput(f"--file {path} is not UTF-8 text (binary data?); give a .sql file") from None


def parse_params(items: list[str]) -> dict[str, str]:
    """['run_id=abc'] -> {'run_id': 'abc'}: DuckDB named parameters ($run_id in the SQL), bound as strings."""
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise UserError(f"--param {item!r}: expected NAME=VALUE for $NAME in the SQL, e.g. --param run_id=abc")
        params[name.strip()] = value
    return params


def parameter_problem(message: str, params: dict[str, str]) -> str | None:
    """What to do when DuckDB's error is about the $NAME parameters (missing or extra --param); else None."""
    if "Values were not provided for the following" in message:
        names = [name.strip() for name in message.rsplit(":", 1)[1].split(",")]
        return (f"the SQL uses {', '.join('$' + n for n in names)} but no value was given: add "
                + " ".join(f"--param {n}=VALUE" for n in names))
    if "identifiers of the excess parameters" in message:
        names = message.rsplit(":", 1)[1].strip()
        return f"--param {names}: the SQL has no ${names}; drop it, or use ${names} in the SQL"
    if params and "Expected 0, got" in message:
        return f"--param {', '.join(params)}: the SQL has no $NAME parameters; drop --param"
    return None


@app.command()
def report(
    output_dir: Annotated[Path, typer.Option(help="output root holding rlhf.duckdb")] = Path("artifacts"),
    db: Annotated[Optional[Path], typer.Option(help="DuckDB file (default: <output_dir>/rlhf.duckdb)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="report folder (default: <output_dir>/report)")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run",
                                                  help="run to report (default: the newest evaluated run)")] = None,
    sweep_run: Annotated[Optional[str], typer.Option(help="sweep run to show (default: the newest sweep)")] = None,
    samples: Annotated[int, typer.Option("--samples", "-n", min=1, help="prompts shown side by side")] = 6,
) -> None:
    """Write a markdown report with figures (report.md, figures/*.png) from the results store, read-only."""
    from minirlhf.report import ReportError, build_report
    from minirlhf.store import NotAStore, StoreLocked

    try:
        path = build_report(db or output_dir / "rlhf.duckdb", out or output_dir / "report", run_id=run_id,
                            sweep_run_id=sweep_run, n_samples=samples)
    except NotAStore as err:
        raise not_a_store(err) from None
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
