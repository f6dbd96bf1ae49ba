"""The results store against a real DuckDB file: schema and its migration, records, upserts, read-only queries, the
view files, file locks held by real second processes, runs abandoned by killed processes, and directory manifests.
(What a read-only query may not reach: tests/test_store_guards.py.)"""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from minirlhf.stage import content_digest, sha256_file, write_manifest
from minirlhf.store import (
    SCHEMA, SCHEMA_VERSION, VIEW_ORDER, VIEWS, VIEWS_DIR, ReadOnlyQueryError, SchemaVersionError, Store, StoreLocked,
)

REPO = Path(__file__).resolve().parents[1]
TABLES = {"schema_version", "runs", "stage_runs", "metrics", "artifacts", "samples", "failure_events"}


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.for_output_dir(tmp_path / "out")


def python_child(code: str, *args: str) -> subprocess.Popen:
    """A real second Python process running `code`, with this checkout importable."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def git_head(cwd: Path) -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


# ---- schema, runs, stages -------------------------------------------------------------------------------
def test_schema_created_on_first_write_with_version(store):
    assert not store.path.exists()  # nothing happens until the first write
    store.start_run({"seed": 1})
    tables = set(store.query("select table_name from information_schema.tables")["table_name"])
    assert TABLES <= tables
    assert store.query("select version from schema_version")["version"].tolist() == [SCHEMA_VERSION]
    Store(store.path).start_run({"seed": 2})  # a second open is idempotent: still one version row
    assert len(store.query("select * from schema_version")) == 1
    cols = store.query("select column_name from information_schema.columns where table_name = 'metrics'")
    assert cols["column_name"].tolist() == ["stage_run_id", "step", "name", "value", "recorded_at"]


def test_newer_schema_version_is_refused(store):
    store.start_run({})
    con = duckdb.connect(str(store.path))
    con.execute("insert into schema_version values (?, now()::timestamp)", [SCHEMA_VERSION + 1])
    con.close()
    with pytest.raises(SchemaVersionError, match="upgrade minirlhf"):
        Store(store.path).start_run({})


def test_run_and_stage_records(store, monkeypatch):
    monkeypatch.chdir(REPO)
    config = {"seed": 3, "ppo": {"kl_coef": 0.05, "cliprange": 0.2}, "stages": ["sft", "ppo"], "note": None}
    run_id = store.start_run(config, prefect_flow_run_id="flow-1", deployment="demo", parameters={"steps": 4})
    run = store.query("select * from runs where run_id = ?", [run_id]).iloc[0]
    assert run["status"] == "running" and pd.isna(run["finished_at"])
    assert json.loads(run["config"]) == config
    assert json.loads(run["parameters"]) == {"steps": 4}
    assert (run["prefect_flow_run_id"], run["deployment"]) == ("flow-1", "demo")
    assert run["host"]
    versions = json.loads(run["versions"])
    assert versions["duckdb"] == duckdb.__version__ and "python" in versions
    # The sha is HEAD when the checkout has commits, None when it has none: ask git itself.
    expected = git_head(REPO)
    assert (None if pd.isna(run["git_sha"]) else run["git_sha"]) == expected

    sid = store.start_stage(run_id, "sft", config={"lr": 1e-4}, cache_key="abc", output_dir="/tmp/sft", attempt=2)
    store.finish_stage(sid, "failed", cause="RuntimeError: loss is nan")
    store.finish_run(run_id, "failed")
    stage = store.query("select * from stage_runs where stage_run_id = ?", [sid]).iloc[0]
    assert (stage["run_id"], stage["stage"], stage["status"], stage["attempt"]) == (run_id, "sft", "failed", 2)
    assert (stage["cause"], stage["cache_key"], bool(stage["cache_hit"])) == ("RuntimeError: loss is nan", "abc", False)
    assert json.loads(stage["config"]) == {"lr": 1e-4} and stage["finished_at"] >= stage["started_at"]
    run = store.query("select status, finished_at from runs").iloc[0]
    assert run["status"] == "failed" and not pd.isna(run["finished_at"])
    with pytest.raises(ValueError, match="status must be one of"):
        store.finish_run(run_id, "done")
    with pytest.raises(LookupError, match="no run"):
        store.finish_run("nope", "completed")


def test_git_sha_of_a_repo_with_a_commit(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "checkout"
    repo.mkdir()
    (repo / "f.txt").write_text("x")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "f.txt"], ["commit", "-q", "-m", "one"]):
        subprocess.run(git + args, cwd=repo, check=True, capture_output=True)
    monkeypatch.chdir(repo)
    store = Store(tmp_path / "db.duckdb")
    run_id = store.start_run({})
    sha = store.query("select git_sha from runs where run_id = ?", [run_id])["git_sha"][0]
    assert len(sha) == 40 and sha == git_head(repo)


# ---- metrics, artifacts, samples, failure events -------------------------------------------------------
def test_metrics_upsert_keeps_one_row_with_the_new_value(store):
    store.log_metrics("s1", {"ppo/kl": 0.1, "ppo/loss": 2.0}, step=5)
    store.log_metrics("s1", {"ppo/kl": 0.3}, step=5)  # a resumed run writes step 5 again
    store.log_metrics("s1", {"ppo/kl": float("nan"), "ppo/clipfrac": float("inf")}, step=6)
    frame = store.query("select step, name, value from metrics order by step, name")
    assert isinstance(frame, pd.DataFrame)
    got = {(r.step, r.name): r.value for r in frame.itertuples()}
    assert len(frame) == 4 and got[(5, "ppo/kl")] == 0.3 and got[(5, "ppo/loss")] == 2.0
    assert math.isnan(got[(6, "ppo/kl")]) and got[(6, "ppo/clipfrac")] == math.inf
    with pytest.raises(TypeError, match="'sft/note'"):
        store.log_metrics("s1", {"sft/loss": 1.0, "sft/note": "high"}, step=7)
    assert store.query("select count(*) n from metrics where step = 7")["n"][0] == 0  # nothing half-written


def test_artifacts_samples_and_failure_events(store, tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "model.bin").write_bytes(b"w" * 3000)
    (ckpt / "sub" / "tok.json").write_text("{}")
    write_manifest(ckpt)
    store.log_artifact("s1", "checkpoint", ckpt)
    store.log_artifact("s1", "weights", ckpt / "model.bin")
    store.log_artifact("s1", "weights", ckpt / "model.bin")  # again: replaced, not duplicated
    arts = store.query("select kind, path, sha256, bytes from artifacts order by kind").to_dict("records")
    assert len(arts) == 2
    assert arts[0]["sha256"] == content_digest(ckpt) and arts[0]["path"] == str(ckpt.resolve())
    assert arts[0]["bytes"] == sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert arts[1]["sha256"] == sha256_file(ckpt / "model.bin") and arts[1]["bytes"] == 3000
    with pytest.raises(FileNotFoundError):
        store.log_artifact("s1", "checkpoint", tmp_path / "missing")

    rows = [{"prompt_id": 7, "intent": "math", "prompt": "2+2?", "response": "4", "proxy_reward": 1.5,
             "gold_reward": None, "kl": 0.02}]
    store.log_samples("s1", rows, step=10, policy="ppo")
    sample = store.query("select * from samples").iloc[0]
    assert (sample["policy"], sample["prompt_id"], sample["step"], sample["proxy_reward"]) == ("ppo", "7", 10, 1.5)
    assert pd.isna(sample["gold_reward"]) and json.loads(sample["extra"]) == {"kl": 0.02}

    event_id = store.log_failure_event("s1", "length_hacking", "responses doubled in length", step=40,
                                       evidence={"mean_len": 80.0, "kl": float("nan")}, examples=["aaaa"])
    event = store.query("select * from failure_events where event_id = ?", [event_id]).iloc[0]
    assert (event["kind"], event["severity"], event["step"]) == ("length_hacking", "warning", 40)
    assert (json.loads(event["evidence"]) == {"mean_len": 80.0, "kl": "nan"}
            and json.loads(event["examples"]) == ["aaaa"])


# ---- read-only queries ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sql", [
    "insert into metrics values ('x', 1, 'a', 1.0, now()::timestamp)",
    "create table evil (a int)",
    "drop table metrics",
    "update metrics set value = 0",
    "select 1; delete from metrics",
    "copy metrics to 'dump.csv'",
])
def test_query_refuses_writes_and_changes_nothing(store, sql, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store.log_metrics("s1", {"sft/loss": 1.0}, step=1)
    before = store.query("select * from metrics")
    tables = set(store.query("show tables")["name"])
    with pytest.raises(ReadOnlyQueryError, match="query is read-only.*write API"):
        store.query(sql)
    pd.testing.assert_frame_equal(store.query("select * from metrics"), before)
    assert set(store.query("show tables")["name"]) == tables
    assert not (tmp_path / "dump.csv").exists()


def test_query_on_missing_database_says_to_run_the_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the pipeline first"):
        Store(tmp_path / "none.duckdb").query("select 1")
    assert not (tmp_path / "none.duckdb").exists()


# ---- locks held by real second processes -----------------------------------------------------------------
HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])  # a writer: holds the file lock until closed
print("locked", flush=True)
if sys.argv[2] == "stdin":
    sys.stdin.readline()
else:
    time.sleep(float(sys.argv[2]))
print(time.time(), flush=True)  # just before releasing
con.close()
"""


def test_writer_waits_for_another_process_then_succeeds(store):
    store.start_run({})
    holder = python_child(HOLD_LOCK, str(store.path), "2")
    assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
    store.log_metrics("s1", {"reward/accuracy": 0.7}, step=1)  # blocks until the holder lets go
    done = time.time()
    released = float(holder.stdout.readline())
    assert holder.wait(timeout=30) == 0
    assert done >= released  # it succeeded only after the other process released the lock
    assert store.query("select value from metrics")["value"].tolist() == [0.7]


def test_writer_gives_up_with_store_locked(store):
    store.start_run({})
    holder = python_child(HOLD_LOCK, str(store.path), "stdin")
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        impatient = Store(store.path, lock_timeout_s=0.3)
        with pytest.raises(StoreLocked, match=str(store.path)):
            impatient.log_metrics("s1", {"reward/accuracy": 0.7})
        with pytest.raises(StoreLocked):
            impatient.query("select * from metrics")  # readers wait for writers too
    finally:
        holder.communicate("release\n", timeout=30)
    assert store.query("select count(*) n from metrics")["n"][0] == 0


WRITE_200 = """
import sys, time
from pathlib import Path
from minirlhf.store import Store
store = Store(sys.argv[1], lock_timeout_s=120)
while not Path(sys.argv[3]).exists():  # start together
    time.sleep(0.005)
for call in range(20):
    store.log_metrics(sys.argv[2], {f"ppo/m{i}": call * 10 + i for i in range(10)}, step=call)
"""


def test_two_processes_writing_at_once_both_complete(store, tmp_path):
    store.start_run({})  # schema exists before the race
    go = tmp_path / "go"
    writers = [python_child(WRITE_200, str(store.path), name, str(go)) for name in ("a", "b")]
    go.touch()
    for writer in writers:
        _, err = writer.communicate(timeout=240)
        assert writer.returncode == 0, err
    counts = store.query("select stage_run_id, count(*) n from metrics group by 1 order by 1")
    assert counts.to_dict("records") == [{"stage_run_id": "a", "n": 200}, {"stage_run_id": "b", "n": 200}]


HOLD_READ = """
import sys, time
from minirlhf.store import open_read_only
con = open_read_only(sys.argv[1])  # a reader, opened as the dashboard and `minirlhf query` open it
print("reading", flush=True)
if sys.argv[2] == "stdin":
    sys.stdin.readline()
else:
    time.sleep(float(sys.argv[2]))
print(time.time(), flush=True)  # just before letting go
con.close()
"""


def test_writer_waits_for_a_reader_then_succeeds(store):
    store.start_run({})
    reader = python_child(HOLD_READ, str(store.path), "3")
    assert reader.stdout.readline().strip() == "reading", reader.stderr.read()
    Store(store.path, lock_timeout_s=60).log_metrics("s1", {"ppo/kl": 0.2}, step=1)  # waits out the reader
    done = time.time()
    released = float(reader.stdout.readline())
    assert reader.wait(timeout=30) == 0
    assert done >= released
    assert store.query("select value from metrics")["value"].tolist() == [0.2]


def test_store_locked_names_the_process_holding_the_file(store):
    store.start_run({})
    reader = python_child(HOLD_READ, str(store.path), "stdin")
    try:
        assert reader.stdout.readline().strip() == "reading", reader.stderr.read()
        with pytest.raises(StoreLocked) as locked:
            Store(store.path, lock_timeout_s=0.5).log_metrics("s1", {"ppo/kl": 0.2})
    finally:
        reader.communicate("let go\n", timeout=30)
    message = str(locked.value)
    assert "\n" not in message
    assert message.startswith(f"{store.path} stayed locked for 0.5 s by PID {reader.pid} (")
    assert "open_read_only" in message  # the holder's command line, from /proc
    assert message.endswith(f"): a reader (the dashboard, a `minirlhf query`, a notebook) or another run holds "
                            f"{store.path}; close it, or raise store.lock_timeout_s")


def test_a_reader_keeps_other_writers_out_until_its_last_query(store):
    """DuckDB's lock on the file is a POSIX record lock: closing *any* descriptor of the file in this process lets it
    go. A Python open() of the store inside `reading()` (it once read the header at every query) let another flow
    write mid-report, and the report's next scan read a half-written segment ("Corrupted DICT_FSST segment")."""
    store.start_run({})
    impatient = Store(store.path, lock_timeout_s=0.5)
    with store.reading():
        for _ in range(3):
            assert store.query("select count(*) n from runs")["n"][0] == 1
        writer = python_child(WRITE_ONE, str(store.path))
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 3, err  # StoreLocked: the reader still holds the file
        with pytest.raises(StoreLocked):
            impatient.log_metrics("s1", {"ppo/kl": 0.1})  # nor a writer of this process
    impatient.log_metrics("s1", {"ppo/kl": 0.1})
    assert store.query("select count(*) n from metrics")["n"][0] == 1


WRITE_ONE = """
import sys
from minirlhf.store import Store, StoreLocked
try:
    Store(sys.argv[1], lock_timeout_s=0.5).log_metrics("s2", {"ppo/kl": 0.2})
except StoreLocked:
    sys.exit(3)
"""


# ---- runs whose process died ------------------------------------------------------------------------------
START_RUN_THEN_WAIT = """
import sys
from minirlhf.store import Store
store = Store(sys.argv[1], lock_timeout_s=60)
run_id = store.start_run({"who": sys.argv[2]})
store.log_metrics(store.start_stage(run_id, "ppo"), {"ppo/kl": 0.1}, step=3)
print(run_id, flush=True)
sys.stdin.readline()  # alive until told, or killed
"""


def test_a_killed_runs_process_leaves_it_abandoned_at_the_next_start_run(store):
    store.start_run({})  # this process's run: alive throughout
    killed = python_child(START_RUN_THEN_WAIT, str(store.path), "killed")
    alive = python_child(START_RUN_THEN_WAIT, str(store.path), "alive")
    try:
        killed_run, alive_run = killed.stdout.readline().strip(), alive.stdout.readline().strip()
        assert killed_run and alive_run, killed.stderr.read() + alive.stderr.read()
        killed.send_signal(signal.SIGKILL)  # no cleanup runs
        killed.wait(timeout=30)  # reaped: gone from the process table, as a killed flow is
        assert store.query("select status from runs where run_id = ?", [killed_run])["status"][0] == "running"
        store.start_run({})
        runs = store.query("select run_id, status, pid, finished_at from runs").set_index("run_id")
    finally:
        alive.communicate("done\n", timeout=30)
    assert runs.loc[killed_run, "status"] == "abandoned" and runs.loc[killed_run, "pid"] == killed.pid
    assert runs.loc[alive_run, "status"] == "running" and runs.loc[alive_run, "pid"] == alive.pid
    assert sorted(runs["status"]) == ["abandoned", "running", "running", "running"]
    stage = store.query("select status, cause, finished_at from stage_runs where run_id = ?", [killed_run]).iloc[0]
    assert stage["status"] == "abandoned" and f"process {killed.pid} on {socket.gethostname()}" in stage["cause"]
    last_metric = store.query("select recorded_at from metrics m join stage_runs s using (stage_run_id) "
                              "where s.run_id = ?", [killed_run])["recorded_at"][0]
    assert runs.loc[killed_run, "finished_at"] == last_metric == stage["finished_at"]  # its last sign of life
    v_run = store.query("select status, duration_s from v_runs where run_id = ?", [killed_run]).iloc[0]
    assert v_run["status"] == "abandoned" and v_run["duration_s"] >= 0


def test_a_reused_pid_abandons_and_another_hosts_run_is_left_alone(store):
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    mine, reused, elsewhere = (store.start_run({}) for _ in range(3))
    with duckdb.connect(str(store.path)) as con:
        # This process's pid, but recorded by a run that started before this process did: the pid came back.
        con.execute("update runs set started_at = started_at - interval 1 day where run_id = ?", [reused])
        # A dead pid, but on another machine: nothing to judge by from here.
        con.execute("update runs set host = 'another-host', pid = ? where run_id = ?", [exited.pid, elsewhere])
    store.start_run({})
    status = dict(store.query("select run_id, status from runs").itertuples(index=False))
    assert (status[mine], status[reused], status[elsewhere]) == ("running", "abandoned", "running")


# ---- schema versions ---------------------------------------------------------------------------------------
def test_a_version_1_file_is_read_as_is_and_migrated_at_its_next_write(tmp_path):
    path = tmp_path / "rlhf.duckdb"
    with duckdb.connect(str(path)) as con:  # the file a minirlhf of schema version 1 wrote
        for ddl in SCHEMA:
            con.execute(re.sub(r", pid BIGINT\)$", ")", ddl))
        con.execute("INSERT INTO schema_version VALUES (1, now()::timestamp)")
        con.execute("INSERT INTO runs (run_id, started_at, status, host) "
                    "VALUES ('old', now()::timestamp, 'running', ?)", [socket.gethostname()])
    store = Store(path)
    columns = "select column_name from information_schema.columns where table_name = 'runs' order by ordinal_position"
    assert "pid" not in store.query(columns)["column_name"].tolist()
    old = store.query("select run_id, status from v_runs").to_dict("records")
    assert old == [{"run_id": "old", "status": "running"}]

    new_run = store.start_run({})
    assert store.query("select version from schema_version order by version")["version"].tolist() == [1, 2]
    fresh = Store(tmp_path / "fresh.duckdb")
    fresh.start_run({})
    assert store.query(columns)["column_name"].tolist() == fresh.query(columns)["column_name"].tolist()
    runs = store.query("select run_id, status, pid from runs").set_index("run_id")
    assert runs.loc["old", "status"] == "running" and pd.isna(runs.loc["old", "pid"])  # no pid: left as it was
    assert runs.loc[new_run, "pid"] == os.getpid()
    assert len(store.query("select * from v_runs")) == 2
    Store(path).start_run({})  # migrated once: no third version row
    assert store.query("select version from schema_version order by version")["version"].tolist() == [1, 2]


# ---- view files ---------------------------------------------------------------------------------------------
def fill_every_view(store: Store) -> None:
    """A few rows, so that every view has at least one: a run with each stage kind, and a rerun that took PPO from
    the cache."""
    run_id = store.start_run({"seed": 1})
    with store.stage_run(run_id, "reward") as log:
        log.log_metrics({"reward/accuracy/math": 0.8, "reward/accuracy/chat": 0.7})
    with store.stage_run(run_id, "ppo", output_dir="/out/ppo") as log:
        for step in (1, 2):
            log.log_metrics({"ppo/proxy_reward": 0.2 * step, "ppo/gold_reward": 0.1 * step, "ppo/kl": 0.01 * step},
                            step=step)
        log.log_samples([{"prompt_id": 1, "intent": "math", "prompt": "2+2?", "response": "four, I think",
                          "proxy_reward": 1.0, "gold_reward": 0.5, "kl": 0.02}], step=2, policy="ppo")
        log.log_failure_event("length_hacking", "responses doubled in length", step=2)
    with store.stage_run(run_id, "eval") as log:
        log.log_metrics({f"eval/{policy}/{metric}": 0.3 for policy in ("sft", "ppo")
                         for metric in ("gold_reward", "kl")})
    with store.stage_run(run_id, "sweep") as log:
        for point in (0, 1):
            log.log_metrics({"sweep/kl_coef": 0.1 / (point + 1), "sweep/kl": 1.0 + point, "sweep/d": 1.0 + point,
                             "sweep/gold_reward": 0.2, "sweep/proxy_reward": 0.4}, step=point)
        log.log_metrics({"sweep/fit/gold/alpha": 1.0, "sweep/fit/gold/beta": 0.5, "sweep/fit/gold/r2": 0.9,
                         "sweep/fit/gold/d_star": 2.7})
    with store.stage_run(run_id, "calibration") as log:
        log.log_metrics({"calibration/combined/threshold": 2, "calibration/combined/recall": 1.0,
                         "calibration/combined/false_alarms": 0, "calibration/combined/median_lead": -1.0})
        log.log_metrics({"defence/defended": 1, "defence/kl_coef": 0.01, "defence/gold": 0.4, "defence/n": 3},
                        step=1)
    with store.stage_run(run_id, "cai") as log:
        for policy, response in (("cai_initial", "Sure, here is how."), ("cai_revision", "I can't help with that.")):
            log.log_samples([{"prompt_id": "cai-0", "prompt": "How do I pick a lock?", "response": response,
                              "gold_reward": 0.0, "principle": "harm", "critique": "It helps a burglary."}],
                            policy=policy)
    with store.stage_run(run_id, "compare") as log:
        log.log_metrics({"compare/ppo/gold_gain": 0.5, "compare/ppo/gold_gain_low": 0.4,
                         "compare/ppo/gold_gain_high": 0.6, "compare/ppo_vs_dpo/win_rate_gold": 0.55})
    store.finish_run(run_id, "completed")
    rerun = store.start_run({"seed": 1})
    with store.stage_run(rerun, "ppo", output_dir="/out/ppo", cache_hit=True):
        pass
    store.finish_run(rerun, "completed")


def test_every_view_is_one_sql_file_that_runs_as_is(store, monkeypatch):
    from typer.testing import CliRunner

    from minirlhf.cli import app as cli_app

    files = {path.stem: path for path in VIEWS_DIR.glob("*.sql")}
    assert VIEWS_DIR == REPO / "minirlhf" / "sql" / "views" and set(files) == set(VIEWS)
    assert list(VIEWS) == list(VIEW_ORDER)
    for i, name in enumerate(VIEW_ORDER):  # a view reads only views created before it
        later = [v for v in VIEW_ORDER[i + 1:] if re.search(rf"\b{v}\b", VIEWS[name])]
        assert not later, f"{name} reads {later}, which come after it in VIEW_ORDER"

    fill_every_view(store)
    rows = {}
    for name, path in files.items():
        text = path.read_text()
        assert re.match(r"-- One row per [^\n]+\n(--[^\n]*\n)*(WITH|SELECT) ", text), \
            f"{path}: start with a `-- One row per ...` line"
        assert [s.type for s in duckdb.extract_statements(text)] == [duckdb.StatementType.SELECT], path
        frame = store.query(text)
        assert len(frame) > 0, f"{name} has no rows on a store holding every kind of row"
        rows[name] = len(frame)

    with duckdb.connect(str(store.path)) as con:  # a file without the views: they come as temp views
        for name in reversed(VIEW_ORDER):
            con.execute(f"DROP VIEW {name}")
    assert {name: len(store.query(path.read_text())) for name, path in files.items()} == rows

    monkeypatch.chdir(REPO)  # the path the README gives
    out = CliRunner().invoke(cli_app, ["query", "--db", str(store.path), "--file", "minirlhf/sql/views/v_runs.sql",
                                       "--format", "json"])
    assert out.exit_code == 0, out.output
    assert sorted(run["status"] for run in json.loads(out.stdout)) == ["completed", "completed"]


# ---- manifests ------------------------------------------------------------------------------------------
