"""The store's journal (minirlhf/journal.py): what a stage on a Ray worker records, replayed by the one writer.

Replaying a journal gives the rows that writing to the store directly gives; a worker killed mid-stage leaves a
stage run that replay finishes as failed at the time of its last line; a line cut by the kill is dropped.
"""

import json
from pathlib import Path

import pytest

from minirlhf.journal import DIED, Journal, ingest, journal_path, read_journal, replay
from minirlhf.stage import StageResult, stage_output
from minirlhf.store import Store

ROWS = {"metrics": "select step, name, value from metrics order by step, name",
        "samples": "select step, policy, prompt_id, prompt, response, proxy_reward, gold_reward, extra from samples "
                   "order by step, prompt_id",
        "artifacts": "select kind, path, sha256, bytes from artifacts",
        "events": "select step, kind, severity, message, evidence, examples from failure_events",
        "stages": "select run_id, stage, status, cause, attempt, cache_key, cache_hit, output_dir, config "
                  "from stage_runs"}


def record_a_stage(store, run_id: str, out: Path) -> None:
    """What a stage run records, through the same calls run_stage makes (stage_run, the logger, log_artifact)."""
    with store.stage_run(run_id, "ppo", config={"ppo": {"kl_coef": 0.05}}, cache_key="abc", attempt=2,
                         output_dir=out) as logger:
        for step in (1, 2):
            logger.log_metrics({"ppo/kl": 0.1 * step, "ppo/proxy_reward": float("nan")}, step=step)
        logger.log_samples([{"prompt_id": 7, "prompt": "2+2?", "response": "4", "proxy_reward": 1.5,
                             "gold_reward": 1.0, "principle": "honest"}], step=2, policy="ppo")
        logger.log_failure_event("kl_spike", "KL rose", step=2, severity="warning", evidence={"kl": 0.2},
                                 examples=["x"])
        logger.store.log_artifact(logger.stage_run_id, "checkpoint", out)


def rows(store: Store) -> dict[str, list]:
    return {name: store.query(sql).astype(str).values.tolist() for name, sql in ROWS.items()}


@pytest.fixture
def sealed(tmp_path) -> Path:
    out = tmp_path / "root" / "ppo" / "abc"
    with stage_output(out, StageResult("ppo")) as tmp:
        (tmp / "model.bin").write_bytes(b"weights")
    return out


def test_replayed_journal_gives_the_rows_of_direct_writes(tmp_path, sealed):
    direct, replayed = Store(tmp_path / "direct.duckdb"), Store(tmp_path / "replayed.duckdb")
    for store in (direct, replayed):
        store.start_run({}, run_id="run1")
    record_a_stage(direct, "run1", sealed)
    journal = Journal(journal_path(tmp_path / "root", "run1", "ppo", "abc"))
    record_a_stage(journal, "run1", sealed)
    assert journal.path.parent == (tmp_path / "root" / "journal" / "run1").resolve()
    assert journal.path.name.startswith("ppo-abc-") and journal.path.suffix == ".jsonl"
    assert not replayed.query("select * from stage_runs").shape[0]  # the journal touched no store

    ids = ingest(replayed, journal.path)
    assert len(ids) == 1 and not journal.path.exists()  # ingested once, then removed
    assert rows(replayed) == rows(direct)
    assert rows(direct)["stages"][0][2] == "completed" and len(rows(direct)["metrics"]) == 4
    assert ingest(replayed, journal.path) == []  # no journal (a task answered from the cache): nothing to do


def test_a_killed_stage_is_finished_as_failed_when_last_heard(tmp_path):
    store = Store(tmp_path / "rlhf.duckdb")
    store.start_run({}, run_id="run1")
    journal = Journal(tmp_path / "j.jsonl")
    stage_run_id = journal.start_stage("run1", "ppo", cache_key="abc")
    journal.log_metrics(stage_run_id, {"ppo/kl": 0.1}, step=1)
    journal.log_metrics(stage_run_id, {"ppo/kl": 0.2}, step=2)
    with journal.path.open("a") as f:  # the kill lands mid-write: half a line
        f.write('{"op": "log_metrics", "stage_run_id": "')
    last_heard = json.loads(journal.path.read_text().splitlines()[2])["at"]

    assert [c["op"] for c in read_journal(journal.path)] == ["start_stage", "log_metrics", "log_metrics"]
    assert replay(store, journal.path) == [stage_run_id]
    row = store.query("select status, cause, strftime(finished_at, '%Y-%m-%dT%H:%M:%S.%f') f from stage_runs")
    assert row["status"].tolist() == ["failed"]
    assert row["cause"][0] == DIED.format(path=journal.path)
    assert row["f"][0] == last_heard
    assert store.query("select step from metrics order by step")["step"].tolist() == [1, 2]


def test_a_corrupt_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('not json\n{"op": "finish_stage"}\n')
    with pytest.raises(ValueError, match="j.jsonl:1: not a JSON line"):
        read_journal(path)
