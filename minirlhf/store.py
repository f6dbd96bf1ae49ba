"""The results store: every run, stage, metric, artifact, sample and failure event in one DuckDB file.

Usage:
    store = Store.for_output_dir("artifacts")          # artifacts/rlhf.duckdb, created on first write
    run_id = store.start_run(cfg.model_dump(mode="json"))
    stage_run_id = store.start_stage(run_id, "sft", cache_key=key, output_dir=str(out))
    store.log_metrics(stage_run_id, {"sft/loss": 2.1, "sft/lr": 1e-4}, step=10)
    store.log_artifact(stage_run_id, "checkpoint", out)  # sha256 + size computed when not given
    store.finish_stage(stage_run_id, "completed")
    store.finish_run(run_id, "completed")
    store.query("select step, value from metrics where name = 'sft/loss' order by step")  # a DataFrame

DuckDB lets one process open a file for writing at a time, and while it does, other processes cannot even
open it read-only (see ../shared/NOTES.md). So every write is a short-lived connection (open, one
transaction, close) and every open retries with exponential backoff and jitter for up to `lock_timeout_s`,
then raises `StoreLocked`, naming the process that holds the file. Never hold a connection of your own open on this
file while a pipeline runs. Timestamps are UTC. The table and column names below are the public SQL API: rename nothing.

Reading: every read-only connection (`Store.query`, so `minirlhf query`, the report and the dashboard) comes from
`open_read_only`, which turns on DuckDB's own guards: no file or network access beyond the store itself, no
extension install or load, and a locked configuration. `read_only=True` alone still let `EXPLAIN ANALYZE COPY ... TO`,
`PRAGMA import_database` and `CALL enable_logging(storage='file')` write files, and `read_csv('https://...')` install
httpfs into ~/.duckdb. So a query reads the store and nothing else: `read_csv('x.csv')` or `read_text('/etc/passwd')`
is refused like a write (ReadOnlyQueryError). To join a file with the results, open DuckDB yourself
(`duckdb.sql("select * from 'x.csv'")`) on a copy of rlhf.duckdb. The statement-type check (READ_STATEMENTS) stays as
a second layer with the clearer message.

Views: one SELECT per file in minirlhf/sql/views/<name>.sql (VIEW_ORDER: dependencies first), each runnable as is
with `minirlhf query --file minirlhf/sql/views/v_runs.sql`. `VIEWS` maps name -> SQL.

Runs whose process died without finishing them (SIGKILL, OOM, a lost machine) are marked 'abandoned' by the next
`start_run` on the same host: `runs.pid` (schema version 2) says which process to look for.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import random
import re
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import pandas as pd

from minirlhf.stage import MANIFEST, content_digest, sha256_file

DB_FILENAME = "rlhf.duckdb"
SCHEMA_VERSION = 2
FINISH_STATUSES = ("completed", "failed", "cancelled", "abandoned")  # abandoned: its process died (start_run finds it)
SEVERITIES = ("info", "warning", "error", "critical")
VERSIONED_PACKAGES = ("minirlhf", "torch", "transformers", "trl", "datasets", "accelerate", "duckdb", "prefect")
# Statement kinds a query may run; the connection is read-only too, this check just gives the clearer error
# and also refuses what a read-only connection allows but writes elsewhere (COPY ... TO, SET, ATTACH).
READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.PRAGMA,
                   duckdb.StatementType.CALL}
# DuckDB's own guards for every read-only connection (see open_read_only): read_only=True alone still writes files
# through EXPLAIN ANALYZE COPY, PRAGMA import_database and CALL enable_logging, and installs extensions on first use.
READ_ONLY_CONFIG = {"enable_external_access": False, "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False, "lock_configuration": True}
# DuckDB's text when another process holds the file: "Conflicting lock is held in /usr/bin/python3 (PID 123)".
LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")
# Writers: no extension installed or loaded behind our back either (a SQLite file at the store's path would fetch
# sqlite_scanner from the network).
WRITER_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB file's header

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)",
    """CREATE TABLE IF NOT EXISTS runs (run_id VARCHAR PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP,
        status VARCHAR, config JSON, git_sha VARCHAR, versions JSON, prefect_flow_run_id VARCHAR,
        deployment VARCHAR, parameters JSON, host VARCHAR, pid BIGINT)""",
    """CREATE TABLE IF NOT EXISTS stage_runs (stage_run_id VARCHAR PRIMARY KEY, run_id VARCHAR, stage VARCHAR,
        started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR, cause VARCHAR, attempt INTEGER,
        cache_key VARCHAR, cache_hit BOOLEAN, task_run_id VARCHAR, config JSON, output_dir VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS metrics (stage_run_id VARCHAR, step BIGINT, name VARCHAR, value DOUBLE,
        recorded_at TIMESTAMP, PRIMARY KEY (stage_run_id, step, name))""",
    """CREATE TABLE IF NOT EXISTS artifacts (stage_run_id VARCHAR, kind VARCHAR, path VARCHAR, sha256 VARCHAR,
        bytes BIGINT, recorded_at TIMESTAMP, PRIMARY KEY (stage_run_id, kind, path))""",
    """CREATE TABLE IF NOT EXISTS samples (stage_run_id VARCHAR, step BIGINT, policy VARCHAR, prompt_id VARCHAR,
        intent VARCHAR, prompt VARCHAR, response VARCHAR, proxy_reward DOUBLE, gold_reward DOUBLE, extra JSON,
        recorded_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS failure_events (event_id VARCHAR PRIMARY KEY, stage_run_id VARCHAR, step BIGINT,
        kind VARCHAR, severity VARCHAR, message VARCHAR, evidence JSON, examples JSON, detected_at TIMESTAMP)""",
]
# Schema changes since version 1, applied in order to an older file at its next write (idempotent statements: two
# processes may race to the same file, and a half-migrated file can be migrated again). New files get SCHEMA above.
MIGRATIONS = {
    2: ["ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid BIGINT"],  # which process to look for before calling a run dead
}
SAMPLE_COLUMNS = ("prompt_id", "intent", "prompt", "response", "proxy_reward", "gold_reward")

# Views: the questions people ask most, as SQL (README "Dashboards and SQL"; dashboards/ reads them), one SELECT per
# file in minirlhf/sql/views/. Written into the file at every writer's schema check (CREATE OR REPLACE: a file from
# an older minirlhf gets them at its next write) and created as TEMP views on every read-only `query` connection, so
# a file that no writer has touched since still answers them. Policies are rows, never columns: any policy the eval
# stage adds shows up. Created in this order: a view comes after the views it reads.
VIEWS_DIR = Path(__file__).resolve().parent / "sql" / "views"
VIEW_ORDER = ("v_runs", "v_stage_runs", "v_stage_outputs", "v_metrics", "v_ppo_curves", "v_eval_metrics",
              "v_policy_comparison", "v_rm_accuracy_by_intent", "v_samples", "v_sweep_points", "v_sweep_fits",
              "v_failure_events", "v_detector_calibration", "v_defence", "v_compare", "v_cai_revisions")


def load_views(views_dir: Path = VIEWS_DIR) -> dict[str, str]:
    """{view name: its SELECT}, in VIEW_ORDER; every .sql file in views_dir must be listed there and vice versa."""
    files = {p.stem for p in views_dir.glob("*.sql")}
    if files != set(VIEW_ORDER):
        raise RuntimeError(f"{views_dir} holds views {sorted(files)} but VIEW_ORDER in {__file__} lists "
                           f"{sorted(VIEW_ORDER)}: add the new view's name to VIEW_ORDER after the views it reads")
    return {name: (views_dir / f"{name}.sql").read_text().strip().rstrip(";") for name in VIEW_ORDER}


VIEWS = load_views()


class StoreLocked(RuntimeError):
    """Another process (or another connection of this one) held the database file for longer than `lock_timeout_s`."""


class ReadOnlyQueryError(RuntimeError):
    """`Store.query` was given a statement that would write, or reach a file, URL or extension outside the store."""


class SchemaVersionError(RuntimeError):
    """The file was written by a newer minirlhf than this one."""


class NotAStore(ValueError):
    """The file is not a DuckDB database (a CSV, a SQLite file, a text file, ...)."""


class Store:
    def __init__(self, path: str | Path, lock_timeout_s: float = 60.0):
        if lock_timeout_s < 0:
            raise ValueError(f"lock_timeout_s must be >= 0 (got {lock_timeout_s})")
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._schema_checked = False
        self._reader: duckdb.DuckDBPyConnection | None = None  # the shared connection inside `reading()`
        self._writer: duckdb.DuckDBPyConnection | None = None  # the shared connection inside `writing()`

    @classmethod
    def for_output_dir(cls, output_dir: str | Path, lock_timeout_s: float = 60.0) -> "Store":
        return cls(Path(output_dir) / DB_FILENAME, lock_timeout_s=lock_timeout_s)

    def stage_folder(self, stage: str, recorded_output_dir: str | Path) -> Path:
        """A stage output's folder beside this store (`<root>/<stage>/<key>`), from the path a stage run recorded:
        a copied or moved output root still finds its files."""
        return self.path.parent / stage / Path(str(recorded_output_dir)).name

    @classmethod
    def for_config(cls, cfg) -> "Store":
        """The store of a PipelineConfig: `<output_dir>/rlhf.duckdb`, waiting `store.lock_timeout_s` for the lock."""
        return cls.for_output_dir(cfg.output_dir, lock_timeout_s=cfg.store.lock_timeout_s)

    # ---- runs and stages -----------------------------------------------------------------------------
    def start_run(self, config: dict, *, run_id: str | None = None, prefect_flow_run_id: str | None = None,
                  deployment: str | None = None, parameters: dict | None = None) -> str:
        run_id, host = run_id or uuid.uuid4().hex, socket.gethostname()
        row = [run_id, _now(), _to_json(config), git_sha(), _to_json(library_versions()),  # before taking the lock
               _str_or_none(prefect_flow_run_id), deployment, _to_json(parameters), host, os.getpid()]
        with self._write() as con:
            _mark_abandoned_runs(con, host)
            con.execute("INSERT INTO runs (run_id, started_at, finished_at, status, config, git_sha, versions, "
                        "prefect_flow_run_id, deployment, parameters, host, pid) "
                        "VALUES (?, ?, NULL, 'running', ?, ?, ?, ?, ?, ?, ?, ?)", row)
        return run_id

    @contextmanager
    def run(self, config: dict, **kwargs) -> Iterator[str]:
        """`with store.run(cfg.model_dump(mode="json")) as run_id:` a runs row, 'completed' when the block ends,
        'failed' if it raises (the exception goes on). Keyword arguments as for `start_run`."""
        run_id = self.start_run(config, **kwargs)
        try:
            yield run_id
        except BaseException:
            self.finish_run(run_id, "failed")
            raise
        self.finish_run(run_id, "completed")

    @contextmanager
    def stage_run(self, run_id: str, stage: str, **kwargs) -> Iterator["StoreLogger"]:
        """`with store.stage_run(run_id, "sft", cache_key=key) as logger:` a stage_runs row, 'completed' when the
        block ends, 'failed' with the exception as its cause if it raises. The logger writes to this row."""
        stage_run_id = self.start_stage(run_id, stage, **kwargs)
        try:
            yield StoreLogger(self, stage_run_id)
        except BaseException as exc:
            self.finish_stage(stage_run_id, "failed", cause=f"{type(exc).__name__}: {exc}")
            raise
        self.finish_stage(stage_run_id, "completed")

    def finish_run(self, run_id: str, status: str) -> None:
        _check_choice("status", status, FINISH_STATUSES)
        with self._write() as con:
            done = con.execute("UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ? RETURNING run_id",
                               [status, _now(), run_id]).fetchall()
            if not done:
                raise LookupError(f"no run {run_id!r} in {self.path}: start it with start_run first")

    def start_stage(self, run_id: str, stage: str, *, config: dict | None = None, cache_key: str | None = None,
                    cache_hit: bool = False, attempt: int = 1, task_run_id: str | None = None,
                    output_dir: str | Path | None = None, stage_run_id: str | None = None,
                    at: datetime | None = None) -> str:
        """A 'running' stage_runs row; `at`: when it started, if not now (a worker's journal, minirlhf.journal)."""
        stage_run_id = stage_run_id or uuid.uuid4().hex
        with self._write() as con:
            con.execute("INSERT INTO stage_runs VALUES (?, ?, ?, ?, NULL, 'running', NULL, ?, ?, ?, ?, ?, ?)",
                        [stage_run_id, run_id, stage, at or _now(), attempt, cache_key, bool(cache_hit),
                         _str_or_none(task_run_id), _to_json(config), _str_or_none(output_dir)])
        return stage_run_id

    def finish_stage(self, stage_run_id: str, status: str, cause: str | None = None,
                     at: datetime | None = None) -> None:
        _check_choice("status", status, FINISH_STATUSES)
        with self._write() as con:
            done = con.execute("UPDATE stage_runs SET status = ?, cause = ?, finished_at = ? WHERE stage_run_id = ? "
                               "RETURNING stage_run_id", [status, cause, at or _now(), stage_run_id]).fetchall()
            if not done:
                raise LookupError(f"no stage run {stage_run_id!r} in {self.path}: start it with start_stage first")

    # ---- what stages produce -------------------------------------------------------------------------
    def log_metrics(self, stage_run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Upsert: the same (stage_run_id, step, name) again replaces the value, so a resumed run never duplicates."""
        rows, now = [], _now()
        for name, value in metrics.items():
            if isinstance(value, (str, bytes)) or not hasattr(type(value), "__float__"):
                raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}: {value!r}")
            rows.append([stage_run_id, int(step), name, float(value), now])  # NaN and inf are kept: DOUBLE holds them
        if rows:
            with self._write() as con:
                con.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)", rows)

    def log_artifact(self, stage_run_id: str, kind: str, path: str | Path, sha256: str | None = None) -> None:
        """A file: its sha256 and size. A sealed directory: its content digest (minirlhf.stage) and total size."""
        path = Path(path).resolve()
        sha256 = sha256 or artifact_digest(path, f"artifact {kind!r} of stage run {stage_run_id}")
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            size = path.stat().st_size
        else:
            raise FileNotFoundError(f"artifact {kind!r} of stage run {stage_run_id}: {path} does not exist")
        with self._write() as con:
            con.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?)",
                        [stage_run_id, kind, str(path), sha256, size, _now()])

    def log_samples(self, stage_run_id: str, rows: list[dict], step: int = 0, policy: str | None = None) -> None:
        """Rows carry prompt_id, intent, prompt, response, proxy_reward, gold_reward; any other key goes to `extra`."""
        records, now = [], _now()
        for row in rows:
            extra = {k: v for k, v in row.items() if k not in SAMPLE_COLUMNS and k != "policy"}
            records.append([stage_run_id, int(step), policy or row.get("policy"), _str_or_none(row.get("prompt_id")),
                            row.get("intent"), row.get("prompt"), row.get("response"),
                            _float_or_none(row.get("proxy_reward")), _float_or_none(row.get("gold_reward")),
                            _to_json(extra or None), now])
        if records:
            with self._write() as con:
                con.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)

    def log_failure_event(self, stage_run_id: str, kind: str, message: str, *, step: int | None = None,
                          severity: str = "warning", evidence: dict | None = None,
                          examples: list | None = None) -> str:
        _check_choice("severity", severity, SEVERITIES)
        event_id = uuid.uuid4().hex
        with self._write() as con:
            con.execute("INSERT INTO failure_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [event_id, stage_run_id, step, kind, severity, message, _to_json(evidence),
                         _to_json(examples), _now()])
        return event_id

    # ---- reading -------------------------------------------------------------------------------------
    def query(self, sql: str, params: list | dict | None = None) -> pd.DataFrame:
        """Run SQL on a guarded read-only connection (open_read_only). A statement that would write, or that reaches a
        file other than the store, a URL or an extension, raises ReadOnlyQueryError and changes nothing."""
        _require_store(self.path)  # a wrong path is the first thing to hear about
        statements = duckdb.extract_statements(sql)
        if not statements:
            raise ValueError("empty query: give one SELECT statement")
        refused = sorted({s.type.name for s in statements if s.type not in READ_STATEMENTS})
        if refused:
            raise ReadOnlyQueryError(f"query is read-only: {', '.join(refused)} statements are refused; "
                                     "use the library's write API (minirlhf.store.Store) to change the store")
        con = self._reader or self._read_connection()
        try:
            result = con.execute(sql, params or [])
            return result.df() if result.description else pd.DataFrame()
        except duckdb.PermissionException as err:  # READ_ONLY_CONFIG: a file, URL or extension outside the store
            raise ReadOnlyQueryError(
                f"query is read-only and reads only the store: {_first_line(err)}. To query another file, open it "
                "with DuckDB yourself; to change the store, use the library's write API (minirlhf.store.Store)"
            ) from err
        except duckdb.InvalidInputException as err:  # the read-only connection's refusal, or the locked configuration
            if "read-only" not in str(err) and "configuration has been locked" not in str(err):
                raise
            raise ReadOnlyQueryError(f"query is read-only: {_first_line(err)}; use the library's write API "
                                     "(minirlhf.store.Store) to change the store") from err
        finally:
            if con is not self._reader:
                con.close()

    @contextmanager
    def reading(self) -> Iterator["Store"]:
        """`with store.reading():` every `query` inside shares one read-only connection (the report's dozen queries:
        one open and one set of temp views instead of one each). A writer of another process waits meanwhile."""
        _require_store(self.path)
        self._reader = self._read_connection()
        try:
            yield self
        finally:
            self._reader.close()
            self._reader = None

    def _read_connection(self) -> duckdb.DuckDBPyConnection:
        con = self._connect(read_only=True)
        for name, select in VIEWS.items():  # temp views live in memory: a read-only connection may create them
            con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {select}")
        return con

    # ---- connections ---------------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator["Store"]:
        """`with store.writing():` the writes inside share one connection (a reused stage's row, metrics and
        artifact: one open instead of four), each write still its own transaction. Keep the block short: other
        processes cannot open the file meanwhile."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._connect(read_only=False)
        try:
            yield self
        finally:
            self._writer.close()
            self._writer = None

    @contextmanager
    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short-lived connection (or the one of `writing()`), one transaction: committed on success, rolled back
        on any error."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._writer or self._connect(read_only=False)
        try:
            if not self._schema_checked:
                self._ensure_schema(con)
            con.begin()
            try:
                yield con
                con.commit()
            except BaseException:
                con.rollback()
                raise
        finally:
            if con is not self._writer:
                con.close()

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the file (read-only ones through open_read_only), retrying lock conflicts with exponential backoff
        and jitter up to lock_timeout_s; then StoreLocked, naming the process that holds the file."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        while True:
            try:
                return open_read_only(self.path) if read_only else _open(self.path, read_only=False)
            except (duckdb.IOException, duckdb.ConnectionException) as err:
                if not _is_lock_conflict(err):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreLocked(
                        f"{self.path} stayed locked for {self.lock_timeout_s:g} s by {_lock_holder(err)}: a reader "
                        f"(the dashboard, a `minirlhf query`, a notebook) or another run holds {self.path}; close it, "
                        "or raise store.lock_timeout_s"
                    ) from err
                time.sleep(min(left, delay * random.uniform(0.5, 1.5)))
                delay = min(2 * delay, 1.0)

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create what is missing (idempotent) and refuse a file written by a newer schema."""
        con.begin()
        try:
            con.execute(SCHEMA[0])
            found = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            if found is not None and found > SCHEMA_VERSION:
                raise SchemaVersionError(f"{self.path} has schema version {found}, but this minirlhf knows only "
                                         f"version {SCHEMA_VERSION}: upgrade minirlhf or use another output_dir")
            for ddl in SCHEMA[1:]:
                con.execute(ddl)  # IF NOT EXISTS: an older file keeps its tables, MIGRATIONS bring them up to date
            for version, statements in sorted(MIGRATIONS.items()):
                if found is None or version > found:  # a new file: no-ops, its tables were created current
                    for ddl in statements:
                        con.execute(ddl)
            if found is None or found < SCHEMA_VERSION:
                con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, _now()])
            for name, select in VIEWS.items():
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {select}")
            con.commit()
        except BaseException:
            con.rollback()
            raise
        self._schema_checked = True


# ---- opening the file ----------------------------------------------------------------------------------
def open_read_only(path: str | Path) -> duckdb.DuckDBPyConnection:
    """The one way minirlhf opens the store for reading (Store.query: `minirlhf query`, the report, the dashboard):
    read-only, with DuckDB's guards on (READ_ONLY_CONFIG), so nothing it runs can write a file, read one other than
    the store, reach the network or install an extension. No retry here: Store._connect retries lock conflicts."""
    return _open(Path(path), read_only=True)


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    if read_only or path.exists():  # a writer creates a missing file
        _require_store(path)
    try:
        if read_only:
            return duckdb.connect(str(path), read_only=True, config=dict(READ_ONLY_CONFIG))
        con = duckdb.connect(str(path), config=dict(WRITER_CONFIG))
    except (duckdb.IOException, duckdb.CatalogException, duckdb.PermissionException) as err:
        # "not a valid DuckDB database file"; for a .csv/.json/.parquet path an in-memory database over the file,
        # which read-only cannot launch; for a SQLite file an extension it may not load. Reading the header is safe
        # only here: the connect failed, so no connection of this process holds the file's lock (see _require_store).
        if _is_lock_conflict(err) or _has_duckdb_header(path):
            raise
        raise NotAStore(_not_a_store_message(path)) from err
    # Read-write, that in-memory database opens fine, and every write would vanish with it.
    backing_file = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    if backing_file.fetchone()[0] is None:
        con.close()
        raise NotAStore(_not_a_store_message(path))
    return con


def _require_store(path: Path) -> None:
    """FileNotFoundError when there is no file. Whether it is a DuckDB database, DuckDB decides (_open: NotAStore).
    Never open() the file here: DuckDB's lock is a POSIX record lock, and closing any descriptor of the file in this
    process drops it, so a header read inside `reading()` let another process write under a live reader."""
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}: run the pipeline first (`make demo` or `minirlhf run`)")


def _has_duckdb_header(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(12)[8:12] == DUCKDB_MAGIC


def _not_a_store_message(path: Path) -> str:
    return f"{path} is not a DuckDB database (minirlhf's results store is <output_dir>/{DB_FILENAME})"


def _is_lock_conflict(err: Exception) -> bool:
    # Another process holds the file lock, or this process has it open with another configuration (read-only, or
    # read-write) on a connection still open.
    return "Could not set lock" in str(err) or "different configuration" in str(err)


def _lock_holder(err: Exception) -> str:
    """Who holds the file, from DuckDB's error: "PID 123 (python -m streamlit run dashboards/app.py)"."""
    found = LOCK_HOLDER.search(str(err))
    if found is None:
        if "different configuration" in str(err):
            return f"this process (PID {os.getpid()}), on another of its connections"
        return "another process"
    pid = int(found["pid"])
    return f"PID {pid} ({_command_line(pid) or found['exe']})"


def _command_line(pid: int, limit: int = 160) -> str | None:
    """The process's command line, on one line and cut to `limit` characters; None when /proc does not have it."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone already, another OS, or hidden from us
        return None
    command = " ".join(" ".join(arg.decode(errors="replace").split()) for arg in raw.split(b"\0") if arg)
    return command if len(command) <= limit else command[: limit - 3] + "..."


# ---- runs whose process died -------------------------------------------------------------------------------
def _mark_abandoned_runs(con: duckdb.DuckDBPyConnection, host: str) -> None:
    """Runs of this host still 'running' whose process is gone: 'abandoned', with their 'running' stage runs. Only
    this host's: a pid says nothing about another machine. finished_at is the run's last sign of life (its last
    stage start or finish, or metric), so v_runs' duration_s is how long it really ran."""
    running = con.execute("SELECT run_id, pid, started_at FROM runs "
                          "WHERE status = 'running' AND host = ? AND pid IS NOT NULL", [host]).fetchall()
    for run_id, pid, started_at in running:
        if process_alive(pid, started_at):
            continue
        last_seen = con.execute("""
            SELECT max(t) FROM (
                SELECT started_at AS t FROM runs WHERE run_id = $1
                UNION ALL SELECT started_at FROM stage_runs WHERE run_id = $1
                UNION ALL SELECT finished_at FROM stage_runs WHERE run_id = $1
                UNION ALL SELECT m.recorded_at FROM metrics m JOIN stage_runs s USING (stage_run_id)
                          WHERE s.run_id = $1)""", [run_id]).fetchone()[0]
        cause = f"abandoned: process {pid} on {host} ended without finishing its run (killed, or out of memory)"
        con.execute("UPDATE stage_runs SET status = 'abandoned', cause = ?, finished_at = ? "
                    "WHERE run_id = ? AND status = 'running'", [cause, last_seen, run_id])
        con.execute("UPDATE runs SET status = 'abandoned', finished_at = ? WHERE run_id = ?", [last_seen, run_id])


def process_alive(pid: int, since: datetime | None = None) -> bool:
    """Whether process `pid` of this host is alive and, given `since` (naive UTC), is the one that was alive then:
    a process that started later only got the pid again (a restarted container's flow is often the same small pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's; /proc may hide the rest
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc (not Linux): the pid is all there is to go on
    state, started = stat
    if state == "Z":
        return False  # a zombie: dead, only not yet reaped by its parent
    return since is None or started <= since + timedelta(seconds=2)  # /proc's boot time has 1 s steps


def _proc_stat(pid: int) -> tuple[str, datetime] | None:
    """(state, start time as naive UTC) of a process from /proc; None without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # the name may hold spaces
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5): start time in ticks
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return fields[0], datetime.fromtimestamp(started, timezone.utc).replace(tzinfo=None)


class StoreLogger:
    """A MetricLogger (minirlhf.stage) bound to one stage run of the store."""

    def __init__(self, store: Store, stage_run_id: str):
        self.store, self.stage_run_id = store, stage_run_id

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.store.log_metrics(self.stage_run_id, metrics, step=step)

    def log_samples(self, rows: list[dict], step: int = 0, policy: str | None = None) -> None:
        self.store.log_samples(self.stage_run_id, rows, step=step, policy=policy)

    def log_failure_event(self, kind: str, message: str, **kwargs) -> None:
        self.store.log_failure_event(self.stage_run_id, kind, message, **kwargs)


def artifact_digest(path: Path, what: str) -> str:
    """What the artifacts table holds as sha256: a file's, or a sealed directory's content digest (minirlhf.stage).
    `what` names the artifact in the error."""
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{what}: {path} has no {MANIFEST}; seal it first (minirlhf.stage)")
        return content_digest(path)
    if path.is_file():
        return sha256_file(path)
    raise FileNotFoundError(f"{what}: {path} does not exist")


# ---- run provenance ----------------------------------------------------------------------------------
def git_sha() -> str | None:
    """HEAD of the git checkout holding the cwd, else of the one holding this package; None when neither is."""
    for where in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):  # no git binary, or it hung
            return None
        sha = out.stdout.strip()
        if out.returncode == 0 and len(sha) == 40 and all(c in "0123456789abcdef" for c in sha):
            return sha
    return None


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass  # not installed: omitted, as documented
    return versions


# ---- small converters ----------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # TIMESTAMP columns hold naive UTC


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(choices)} (got {value!r})")


def _str_or_none(value) -> str | None:
    return None if value is None else str(value)


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def _jsonable(value):
    """Plain JSON values; numpy/torch values via tolist(); NaN and inf as strings (JSON has no literal for them)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (Path, datetime)):
        return str(value)
    return value


def _to_json(value) -> str | None:
    return None if value is None else json.dumps(_jsonable(value))
