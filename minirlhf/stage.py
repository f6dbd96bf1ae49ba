"""What every stage shares: its output directory protocol, its cache key and the record it returns.

Usage (inside a stage function):
    result = StageResult("sft", "", "")
    with stage_output(out_dir, result) as tmp:  # tmp is a sibling temp dir
        model.save_pretrained(tmp)               # write everything, fill result.metrics
    # on success: MANIFEST.sha256, record.json (with the digest), the marker COMPLETE, then tmp -> out_dir

`is_complete(out_dir)` is the truth about whether a stage is done: the marker exists and every file
matches its manifest. A Prefect cache hit is only an optimisation on top (tasks/ checks files again).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from minirlhf.store import directory_digest, verify_manifest, write_manifest

COMPLETE = "COMPLETE"
RECORD = "record.json"
# Bump a stage's version when its code changes what it writes: the cache key includes it.
# ppo 2: curve.jsonl; eval 2: detectors; eval 3: compares the enabled baselines (DPO, RLOO) too;
# eval 4: the degenerate-repetition detector also counts a repeated phrase
STAGE_VERSIONS = {"data": 2, "sft": 1, "reward": 1, "ppo": 2, "dpo": 1, "rloo": 1, "eval": 4, "sweep": 1}


@dataclass
class StageResult:
    """The small record a stage returns: where its output is, its digest and its headline metrics."""

    stage: str
    output_dir: str
    sha256: str
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # per-step metrics: [{"step": 10, "sft/loss": 2.1}, ...]
    seconds: float = 0.0
    cache_hit: bool = False
    step: int = 0  # the training step the summary metrics belong to (the last one)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dir(cls, out_dir: Path) -> "StageResult":
        data = json.loads((Path(out_dir) / RECORD).read_text())
        return cls(**data)


class MetricLogger(Protocol):
    """Where stages send per-step metrics and samples while they run (the store, or nothing)."""

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...
    def log_samples(self, rows: list[dict], step: int = 0, policy: str | None = None) -> None: ...
    def log_failure_event(self, kind: str, message: str, *, step: int | None = None, severity: str = "warning",
                          evidence: dict | None = None, examples: list | None = None) -> None: ...


class NullLogger:
    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        pass

    def log_samples(self, rows: list[dict], step: int = 0, policy: str | None = None) -> None:
        pass

    def log_failure_event(self, kind: str, message: str, **kwargs) -> None:
        pass


def stage_key(stage: str, config_json: str, upstream_digests: list[str] = ()) -> str:
    """A stage's identity: its name, its code version, the config it depends on and its inputs' digests.
    Same key, same output: the output directory is `<output_dir>/<stage>/<key>`."""
    payload = json.dumps([stage, STAGE_VERSIONS[stage], config_json, list(upstream_digests)])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_complete(out_dir: Path) -> bool:
    out_dir = Path(out_dir)
    return (out_dir / COMPLETE).is_file() and (out_dir / RECORD).is_file() and not verify_manifest(out_dir)


@contextmanager
def stage_output(out_dir: Path, result: StageResult) -> Iterator[Path]:
    """Write into a temp sibling; then the manifest, the record (with the manifest's digest), the marker
    last, and an atomic rename. A crash leaves no half-written output directory behind."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        write_manifest(tmp)
        result.output_dir = str(out_dir)
        result.sha256 = directory_digest(tmp)
        (tmp / RECORD).write_text(result.to_json())
        (tmp / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        if out_dir.exists():  # an incomplete or stale copy: replaced, never merged
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
