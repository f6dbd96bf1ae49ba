"""The store's write side as a file: what a stage computed on another machine records, for one process to ingest.

Usage:
    journal = Journal(Path("artifacts/journal/<run_id>/ppo-<key>.jsonl"))
    run_stage(spec, journal, run_id)          # on a Ray worker: every stage_runs row, metric, sample, artifact and
                                              # failure event goes to the file, one JSON line per call
    replay(Store.for_config(cfg), journal.path)   # in the flow process, after the task: the same rows in DuckDB

DuckDB is single-writer across processes (../shared/NOTES.md): a stage on a Ray worker must not open the store
while the flow, the dashboard or another worker holds it. So a worker writes its rows to a journal in the shared
output root, and the flow process, the one writer, replays it into the store once the task has ended (per-step PPO
metrics reach the store after the stage, with the times they were recorded at). A journal is append-only and each
line is flushed as it is written: a worker killed mid-stage leaves every line before the kill, and replay marks a
stage run that never finished as failed, naming the journal.
"""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

from minirlhf.store import Store, _jsonable, _now, artifact_digest

JOURNAL_DIRNAME = "journal"
DIED = "the worker running it died before the stage finished (journal {path} ends here); a retry resumes it"


def journal_path(output_dir: str | Path, run_id: str, stage: str, key: str) -> Path:
    """A new file for one stage task of run `run_id` on a worker: `<output_dir>/journal/<run_id>/<stage>-<key>-<id>`
    (two tasks of the same stage and key in one run, such as two seeds sharing SFT, each get their own)."""
    return Path(output_dir).resolve() / JOURNAL_DIRNAME / run_id / f"{stage}-{key}-{uuid.uuid4().hex[:8]}.jsonl"


class Journal:
    """The write methods of `Store` (and its `stage_run` / `writing` blocks), appending JSON lines to `path`."""

    lock_timeout_s = 0.0  # nothing to wait for: a file that only this stage appends to

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _append(self, op: str, **fields) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # NaN and inf stay numbers (Python's JSON reads them back); paths and arrays as the store would write them
        line = json.dumps({"op": op, "at": _now().isoformat(), **fields}, default=_jsonable)
        with self.path.open("a") as f:  # one line per call, flushed at close: a kill loses at most the line in flight
            f.write(line + "\n")

    # the same signatures as Store's
    def start_stage(self, run_id: str, stage: str, *, stage_run_id: str | None = None, **kwargs) -> str:
        stage_run_id = stage_run_id or uuid.uuid4().hex
        self._append("start_stage", run_id=run_id, stage=stage, stage_run_id=stage_run_id, **kwargs)
        return stage_run_id

    def finish_stage(self, stage_run_id: str, status: str, cause: str | None = None) -> None:
        self._append("finish_stage", stage_run_id=stage_run_id, status=status, cause=cause)

    def log_metrics(self, stage_run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self._append("log_metrics", stage_run_id=stage_run_id, metrics={k: float(v) for k, v in metrics.items()},
                     step=int(step))

    def log_artifact(self, stage_run_id: str, kind: str, path: str | Path, sha256: str | None = None) -> None:
        path = Path(path).resolve()  # the digest is taken here, where the files were written
        sha256 = sha256 or artifact_digest(path, f"artifact {kind!r} of stage run {stage_run_id}")
        self._append("log_artifact", stage_run_id=stage_run_id, kind=kind, path=str(path), sha256=sha256)

    def log_samples(self, stage_run_id: str, rows: list[dict], step: int = 0, policy: str | None = None) -> None:
        self._append("log_samples", stage_run_id=stage_run_id, rows=rows, step=int(step), policy=policy)

    def log_failure_event(self, stage_run_id: str, kind: str, message: str, **kwargs) -> None:
        self._append("log_failure_event", stage_run_id=stage_run_id, kind=kind, message=message, **kwargs)

    stage_run = Store.stage_run  # start_stage, a StoreLogger bound to this journal, then finish_stage

    @contextmanager
    def writing(self) -> Iterator["Journal"]:
        yield self


def read_journal(path: str | Path) -> list[dict]:
    """The journal's calls in order; a last line cut by a kill mid-write is dropped (every other line is whole)."""
    lines = Path(path).read_text().splitlines()
    calls = []
    for n, line in enumerate(lines, 1):
        try:
            calls.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines):
                raise ValueError(f"{path}:{n}: not a JSON line; the journal is corrupt") from None
    return calls


def replay(store: Store, path: str | Path) -> list[str]:
    """Write a journal's rows into the store, in one connection; the ids of the stage runs it held. A stage run
    started and never finished (its worker was killed) is finished as 'failed' with the cause `DIED`."""
    calls = read_journal(path)
    started: list[str] = []
    finished: set[str] = set()
    last_heard: dict[str, datetime] = {}  # a stage run that died ends when its last line was written
    with store.writing():
        for call in calls:
            op, at = call.pop("op"), datetime.fromisoformat(call.pop("at"))
            last_heard[call["stage_run_id"]] = at
            if op == "start_stage":
                started.append(store.start_stage(**call, at=at))
            elif op == "finish_stage":
                store.finish_stage(**call, at=at)
                finished.add(call["stage_run_id"])
            elif op in ("log_metrics", "log_artifact", "log_samples", "log_failure_event"):
                getattr(store, op)(**call)
            else:
                raise ValueError(f"{path}: unknown journal entry {op!r}; written by another minirlhf version?")
        for stage_run_id in started:
            if stage_run_id not in finished:
                store.finish_stage(stage_run_id, "failed", cause=DIED.format(path=path), at=last_heard[stage_run_id])
    return started


def ingest(store: Store, path: str | Path) -> list[str]:
    """Replay a journal if there is one (a task answered from the cache wrote none), then remove it."""
    path = Path(path)
    if not path.is_file():
        return []
    ids = replay(store, path)
    path.unlink()
    return ids

