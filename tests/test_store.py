"""The results store against a real DuckDB file: schema, records, upserts, read-only queries, file locks
held by real second processes, and directory manifests."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from minirlhf.stage import content_digest, sha256_file, write_manifest
from minirlhf.store import (
    SCHEMA_VERSION, ReadOnlyQueryError, SchemaVersionError, Store, StoreLocked,
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
    assert json.loads(event["evidence"]) == {"mean_len": 80.0, "kl": "nan"} and json.loads(event["examples"]) == ["aaaa"]


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


# ---- manifests ------------------------------------------------------------------------------------------
