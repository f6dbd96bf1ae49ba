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
then raises `StoreLocked`. Never hold a connection of your own open on this file while a pipeline runs.
Timestamps are UTC. The table and column names below are the public SQL API: rename nothing.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import random
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import pandas as pd

from minirlhf.stage import MANIFEST, content_digest, sha256_file

DB_FILENAME = "rlhf.duckdb"
SCHEMA_VERSION = 1
FINISH_STATUSES = ("completed", "failed", "cancelled")
SEVERITIES = ("info", "warning", "error", "critical")
VERSIONED_PACKAGES = ("minirlhf", "torch", "transformers", "trl", "datasets", "accelerate", "duckdb", "prefect")
# Statement kinds a query may run; the connection is read-only too, this check just gives the clearer error
# and also refuses what a read-only connection allows but writes elsewhere (COPY ... TO, SET, ATTACH).
READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.PRAGMA,
                   duckdb.StatementType.CALL}

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)",
    """CREATE TABLE IF NOT EXISTS runs (run_id VARCHAR PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP,
        status VARCHAR, config JSON, git_sha VARCHAR, versions JSON, prefect_flow_run_id VARCHAR,
        deployment VARCHAR, parameters JSON, host VARCHAR)""",
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
SAMPLE_COLUMNS = ("prompt_id", "intent", "prompt", "response", "proxy_reward", "gold_reward")

# Views: the questions people ask most, as SQL (README "Dashboards and SQL"; dashboards/ reads them). Written into
# the file at every writer's schema check (CREATE OR REPLACE: a file from an older minirlhf gets them at its next
# write) and created as TEMP views on every read-only `query` connection, so a file that no writer has touched
# since still answers them. Policies are rows, never columns: any policy the eval stage adds shows up.
VIEWS = {
    "v_runs": """
        SELECT r.run_id, r.status, r.started_at, r.finished_at, epoch(r.finished_at - r.started_at) AS duration_s,
               count(s.stage_run_id) AS stage_runs,
               count(s.stage_run_id) FILTER (s.status = 'failed') AS failed_attempts,
               count(s.stage_run_id) FILTER (s.cache_hit) AS cache_hits, r.git_sha, r.host, r.prefect_flow_run_id,
               r.deployment, r.config
        FROM runs r LEFT JOIN stage_runs s USING (run_id)
        GROUP BY ALL""",
    "v_stage_runs": """
        SELECT s.run_id, s.stage, s.attempt, s.status, s.cause, s.cache_hit, s.started_at, s.finished_at,
               epoch(s.finished_at - s.started_at) AS duration_s, s.stage_run_id, s.cache_key, s.task_run_id,
               s.output_dir
        FROM stage_runs s""",
    # A stage answered from the cache logs its summary metrics again, but not its per-step metrics or samples:
    # those stay with the stage runs that computed the output. This maps each run's stage to them (all attempts,
    # retries included): the run's own, or those of the last run that computed the same output before it.
    "v_stage_outputs": """
        WITH used AS (
            SELECT run_id, stage, coalesce(output_dir, stage_run_id) AS output, min(started_at) AS asked_at,
                   bool_or(NOT coalesce(cache_hit, false)) AS computed
            FROM stage_runs GROUP BY ALL),
        sourced AS (
            SELECT u.*, CASE WHEN u.computed THEN u.run_id ELSE (
                       SELECT arg_max(p.run_id, p.started_at) FROM stage_runs p
                       WHERE p.stage = u.stage AND coalesce(p.output_dir, p.stage_run_id) = u.output
                         AND NOT coalesce(p.cache_hit, false) AND p.started_at <= u.asked_at) END AS source_run_id
            FROM used u)
        SELECT x.run_id, x.stage, s.stage_run_id, s.attempt, s.status, x.source_run_id <> x.run_id AS reused,
               x.source_run_id
        FROM sourced x JOIN stage_runs s ON s.run_id = x.source_run_id AND s.stage = x.stage
             AND coalesce(s.output_dir, s.stage_run_id) = x.output AND NOT coalesce(s.cache_hit, false)""",
    "v_metrics": """
        SELECT s.run_id, s.stage, s.attempt, m.stage_run_id, m.step, m.name, m.value, m.recorded_at
        FROM metrics m JOIN stage_runs s USING (stage_run_id)""",
    "v_ppo_curves": """
        SELECT o.run_id, m.stage_run_id, o.attempt, o.status AS stage_status, o.reused, m.step,
               max(m.value) FILTER (m.name = 'ppo/proxy_reward') AS proxy_reward,
               max(m.value) FILTER (m.name = 'ppo/gold_reward') AS gold_reward,
               max(m.value) FILTER (m.name = 'ppo/kl') AS kl,
               max(m.value) FILTER (m.name = 'ppo/non_score_reward') AS non_score_reward,
               max(m.value) FILTER (m.name = 'ppo/entropy') AS entropy,
               max(m.value) FILTER (m.name = 'ppo/policy/approxkl') AS approxkl,
               max(m.value) FILTER (m.name = 'ppo/policy/clipfrac') AS clipfrac,
               max(m.value) FILTER (m.name = 'ppo/value/loss') AS value_loss,
               any_value(r.value) AS resumed_from_step
        FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
        LEFT JOIN metrics r ON r.stage_run_id = m.stage_run_id AND r.name = 'ppo/resumed_from_step'
        WHERE o.stage = 'ppo' AND m.name <> 'ppo/resumed_from_step'
        GROUP BY ALL
        HAVING proxy_reward IS NOT NULL OR kl IS NOT NULL""",
    "v_eval_metrics": """
        SELECT s.run_id, m.stage_run_id, split_part(m.name, '/', 2) AS policy,
               substr(m.name, length('eval/' || split_part(m.name, '/', 2) || '/') + 1) AS metric, m.value
        FROM metrics m JOIN stage_runs s USING (stage_run_id)
        WHERE s.stage = 'eval' AND m.name LIKE 'eval/%/%'""",
    "v_policy_comparison": """
        SELECT run_id, stage_run_id, policy,
               max(value) FILTER (metric = 'proxy_reward') AS proxy_reward,
               max(value) FILTER (metric = 'gold_reward') AS gold_reward,
               max(value) FILTER (metric = 'kl') AS kl,
               max(value) FILTER (metric = 'win_rate_gold') AS win_rate_gold,
               max(value) FILTER (metric = 'win_rate_proxy') AS win_rate_proxy,
               max(value) FILTER (metric = 'response_length') AS response_length,
               max(value) FILTER (metric = 'eos_rate') AS eos_rate,
               max(value) FILTER (metric = 'distinct_1') AS distinct_1,
               max(value) FILTER (metric = 'distinct_2') AS distinct_2,
               max(value) FILTER (metric = 'refusal_rate_benign') AS refusal_rate_benign,
               max(value) FILTER (metric = 'refusal_rate_harmful') AS refusal_rate_harmful
        FROM v_eval_metrics
        GROUP BY run_id, stage_run_id, policy""",
    "v_rm_accuracy_by_intent": """
        SELECT s.run_id, m.stage_run_id, substr(m.name, length('reward/accuracy/') + 1) AS intent, m.value AS accuracy
        FROM metrics m JOIN stage_runs s USING (stage_run_id)
        WHERE m.name LIKE 'reward/accuracy/%'""",
    "v_samples": """
        SELECT o.run_id, o.stage, o.attempt, o.reused, x.stage_run_id, x.step, x.policy, x.prompt_id, x.intent, x.prompt, x.response,
               x.proxy_reward, x.gold_reward, TRY_CAST(json_extract_string(x.extra, '$.kl') AS DOUBLE) AS kl,
               CASE WHEN trim(coalesce(x.response, '')) = '' THEN 0
                    ELSE len(regexp_split_to_array(trim(x.response), '\\s+')) END AS response_words,
               x.extra, x.recorded_at
        FROM v_stage_outputs o JOIN samples x USING (stage_run_id)""",
    # The over-optimisation sweep (flows/sweep.py, minirlhf/sweep.py): the sweep stage that computed each run's sweep,
    # one point per PPO run (metric step = point index), the fit of Gao et al. 2022's R(d) = d(alpha - beta log d)
    # at step 0 under sweep/fit/*.
    "v_sweep_points": """
        SELECT o.run_id, m.stage_run_id, m.step AS point,
               max(m.value) FILTER (m.name = 'sweep/kl_coef') AS kl_coef,
               max(m.value) FILTER (m.name = 'sweep/kl') AS kl,
               max(m.value) FILTER (m.name = 'sweep/d') AS d,
               max(m.value) FILTER (m.name = 'sweep/gold_reward') AS gold_reward,
               max(m.value) FILTER (m.name = 'sweep/proxy_reward') AS proxy_reward,
               max(m.value) FILTER (m.name = 'sweep/gold_gain') AS gold_gain,
               max(m.value) FILTER (m.name = 'sweep/proxy_gain') AS proxy_gain
        FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
        WHERE o.stage = 'sweep' AND m.name IN ('sweep/kl_coef', 'sweep/kl', 'sweep/d', 'sweep/gold_reward',
                                               'sweep/proxy_reward', 'sweep/gold_gain', 'sweep/proxy_gain')
        GROUP BY ALL""",
    "v_sweep_fits": """
        SELECT o.run_id, m.stage_run_id, split_part(m.name, '/', 3) AS reward,
               max(m.value) FILTER (m.name LIKE '%/alpha') AS alpha,
               max(m.value) FILTER (m.name LIKE '%/beta') AS beta,
               max(m.value) FILTER (m.name LIKE '%/r2') AS r2,
               max(m.value) FILTER (m.name LIKE '%/d_star') AS d_star
        FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
        WHERE o.stage = 'sweep' AND m.name LIKE 'sweep/fit/%/%'
        GROUP BY ALL""",
    "v_failure_events": """
        SELECT o.run_id, o.stage, o.attempt, o.reused, f.stage_run_id, f.step, f.kind, f.severity, f.message, f.evidence,
               f.examples, f.detected_at, f.event_id
        FROM v_stage_outputs o JOIN failure_events f USING (stage_run_id)""",
}


class StoreLocked(RuntimeError):
    """Another process held the database file for longer than `lock_timeout_s`."""


class ReadOnlyQueryError(RuntimeError):
    """`Store.query` was given a statement that would write."""


class SchemaVersionError(RuntimeError):
    """The file was written by a newer minirlhf than this one."""


class Store:
    def __init__(self, path: str | Path, lock_timeout_s: float = 60.0):
        if lock_timeout_s < 0:
            raise ValueError(f"lock_timeout_s must be >= 0 (got {lock_timeout_s})")
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._schema_checked = False

    @classmethod
    def for_output_dir(cls, output_dir: str | Path, lock_timeout_s: float = 60.0) -> "Store":
        return cls(Path(output_dir) / DB_FILENAME, lock_timeout_s=lock_timeout_s)

    @classmethod
    def for_config(cls, cfg) -> "Store":
        """The store of a PipelineConfig: `<output_dir>/rlhf.duckdb`, waiting `store.lock_timeout_s` for the lock."""
        return cls.for_output_dir(cfg.output_dir, lock_timeout_s=cfg.store.lock_timeout_s)

    # ---- runs and stages -----------------------------------------------------------------------------
    def start_run(self, config: dict, *, run_id: str | None = None, prefect_flow_run_id: str | None = None,
                  deployment: str | None = None, parameters: dict | None = None) -> str:
        run_id = run_id or uuid.uuid4().hex
        row = [run_id, _now(), _to_json(config), git_sha(), _to_json(library_versions()),  # before taking the lock
               _str_or_none(prefect_flow_run_id), deployment, _to_json(parameters), socket.gethostname()]
        with self._write() as con:
            con.execute("INSERT INTO runs VALUES (?, ?, NULL, 'running', ?, ?, ?, ?, ?, ?, ?)", row)
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
                    output_dir: str | Path | None = None, stage_run_id: str | None = None) -> str:
        stage_run_id = stage_run_id or uuid.uuid4().hex
        with self._write() as con:
            con.execute("INSERT INTO stage_runs VALUES (?, ?, ?, ?, NULL, 'running', NULL, ?, ?, ?, ?, ?, ?)",
                        [stage_run_id, run_id, stage, _now(), attempt, cache_key, bool(cache_hit),
                         _str_or_none(task_run_id), _to_json(config), _str_or_none(output_dir)])
        return stage_run_id

    def finish_stage(self, stage_run_id: str, status: str, cause: str | None = None) -> None:
        _check_choice("status", status, FINISH_STATUSES)
        with self._write() as con:
            done = con.execute("UPDATE stage_runs SET status = ?, cause = ?, finished_at = ? WHERE stage_run_id = ? "
                               "RETURNING stage_run_id", [status, cause, _now(), stage_run_id]).fetchall()
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
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            if sha256 is None:
                if not (path / MANIFEST).is_file():
                    raise FileNotFoundError(f"artifact {kind!r}: {path} has no {MANIFEST}; seal it first (minirlhf.stage)")
                sha256 = content_digest(path)
        elif path.is_file():
            size, sha256 = path.stat().st_size, sha256 or sha256_file(path)
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
    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """Run SQL on a read-only connection; anything that would write raises ReadOnlyQueryError."""
        if not self.path.is_file():
            raise FileNotFoundError(f"no results store at {self.path}: run the pipeline first "
                                    "(`make demo` or `minirlhf run`)")
        statements = duckdb.extract_statements(sql)
        if not statements:
            raise ValueError("empty query: give one SELECT statement")
        refused = sorted({s.type.name for s in statements if s.type not in READ_STATEMENTS})
        if refused:
            raise ReadOnlyQueryError(f"query is read-only: {', '.join(refused)} statements are refused; "
                                     "use the library's write API (minirlhf.store.Store) to change the store")
        con = self._connect(read_only=True)
        try:
            for name, select in VIEWS.items():  # temp views live in memory: a read-only connection may create them
                con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {select}")
            result = con.execute(sql, params or [])
            return result.df() if result.description else pd.DataFrame()
        except duckdb.InvalidInputException as err:  # the read-only connection's own refusal
            if "read-only" not in str(err):
                raise
            raise ReadOnlyQueryError(f"query is read-only: {err}; use the library's write API") from err
        finally:
            con.close()

    # ---- connections ---------------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short-lived connection, one transaction: committed on success, rolled back on any error."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connect(read_only=False)
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
            con.close()

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the file, retrying lock conflicts with exponential backoff and jitter up to lock_timeout_s."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as err:
                # Another process holds the file lock, or this process has it open with the other mode.
                if "Could not set lock" not in str(err) and "different configuration" not in str(err):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreLocked(
                        f"{self.path} stayed locked for {self.lock_timeout_s:g} s: {err}\n"
                        "Another process is writing to it (a pipeline run, a Prefect worker, or a DuckDB shell or "
                        "notebook with the file open). Wait for it to finish or close it, or raise lock_timeout_s."
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
                con.execute(ddl)
            for name, select in VIEWS.items():
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {select}")
            if found is None:
                con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, _now()])
            con.commit()
        except BaseException:
            con.rollback()
            raise
        self._schema_checked = True


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
