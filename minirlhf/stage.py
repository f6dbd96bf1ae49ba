"""What every stage output shares: an atomic directory with a manifest, a record, and a completion marker.

Usage (inside a stage function):
    result = StageResult("sft")
    with stage_output(out_dir, result) as tmp:      # tmp is a sibling temp dir
        model.save_pretrained(tmp)                  # write everything, fill result.metrics
    # on success: record.json, MANIFEST.sha256 over every file, the marker COMPLETE, then tmp -> out_dir
    result = load_output(out_dir)                   # the verified StageResult, or None if incomplete/changed

    with atomic_dir(checkpoint_dir / "step-000010") as tmp:   # PPO checkpoints use the same protocol
        torch.save(state, tmp / "trainer_state.pt")

The files are the truth about whether a stage is done: the marker exists, every file (the record included)
matches the manifest, and the record names the key the directory is filed under. A Prefect cache hit is
only an optimisation on top.

A stage's digest (`StageResult.sha256`, what downstream keys hold) covers what downstream stages read:
every manifest line except the record's. The record holds timings and how the output was made (resumed,
reused), which must not invalidate everything below a stage recomputed to the same bytes. So a stage
writes timings into its record only, never into another file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

MANIFEST = "MANIFEST.sha256"
COMPLETE = "COMPLETE"
RECORD = "record.json"


@dataclass
class StageResult:
    """The small record a stage returns: which output (stage and key), its digest and its headline metrics.

    `output_dir` is relative to the output root (`sft/<key>`): a copied or moved root works as it is.
    `run_id` is the run whose stage_runs row recorded this result (an orchestrator's cached copy holds an
    earlier run's id: that is how a flow tells it was answered from its cache)."""

    stage: str
    key: str = ""  # the output's folder name under <output_dir>/<stage>/ (stage_output fills it in)
    sha256: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # per-step metrics: [{"step": 10, "sft/loss": 2.1}, ...]
    seconds: float = 0.0
    step: int = 0  # the training step the summary metrics belong to (the last one)
    cache_hit: bool = False
    run_id: str | None = None

    @property
    def output_dir(self) -> str:
        return f"{self.stage}/{self.key}"

    def path(self, root: str | Path) -> Path:
        return Path(root) / self.output_dir

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StageResult":
        return cls(**data)


def stage_record(result: StageResult) -> dict:
    """What record.json holds: the result less what belongs to one use of it (digest, cache hit, run)."""
    return {k: v for k, v in result.to_dict().items() if k not in ("sha256", "cache_hit", "run_id")}


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


# ---- the directory protocol -----------------------------------------------------------------------------
@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Write a directory in a sibling temp dir; on success seal it (manifest, then COMPLETE) and rename it to
    `final`, replacing an incomplete or stale copy (never merging). On failure nothing is left behind."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        write_manifest(tmp)
        (tmp / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def stage_output(out_dir: Path, result: StageResult) -> Iterator[Path]:
    """`atomic_dir` for a stage: the record is written last inside, so the manifest covers it. On a rank > 0 of a
    data-parallel stage (minirlhf.launch) it is a scratch folder outside the output root, dropped afterwards: the
    ranks compute alike, rank 0 alone writes the output."""
    result.key = Path(out_dir).name
    if is_other_rank():
        with tempfile.TemporaryDirectory(prefix=f"minirlhf-{result.stage}-rank-") as scratch:
            yield Path(scratch)
        return
    with atomic_dir(out_dir) as tmp:
        yield tmp
        (tmp / RECORD).write_text(json.dumps(stage_record(result), indent=1))
    result.sha256 = content_digest(out_dir)


def is_other_rank() -> bool:
    """A rank > 0 of a data-parallel stage: its process group's rank, else the RANK torchrun sets. torch is not
    imported for it (planning and reading outputs never load torch)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() > 0
    return int(os.environ.get("RANK", "0")) > 0


def output_problems(directory: Path) -> list[str]:
    """Why a sealed directory (stage output or checkpoint) cannot be trusted; empty when it can."""
    directory = Path(directory)
    if not (directory / COMPLETE).is_file():
        return [f"{directory}: no {COMPLETE} marker (interrupted or not written yet)"]
    return verify_manifest(directory)


def load_output(out_dir: Path) -> StageResult | None:
    """The verified record of a complete stage output filed under its own key, else None."""
    out_dir = Path(out_dir)
    if output_problems(out_dir) or not (out_dir / RECORD).is_file():
        return None
    result = StageResult(**json.loads((out_dir / RECORD).read_text()))
    if result.key != out_dir.name:  # a directory copied under another key is not this stage's output
        return None
    result.sha256 = content_digest(out_dir)
    return result


def is_complete(out_dir: Path) -> bool:
    return load_output(out_dir) is not None


# ---- manifests and digests --------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):  # 1 MiB at a time: checkpoints may not fit in memory twice
            digest.update(chunk)
    return digest.hexdigest()


def _listed_files(directory: Path) -> list[str]:
    """Every file under directory as a sorted posix relative path, less the manifest and the marker."""
    files = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return sorted(f for f in files if f not in (MANIFEST, COMPLETE))


def write_manifest(directory: str | Path) -> Path:
    """Write `MANIFEST.sha256` (`sha256  relative/path` per file, the `sha256sum` format) and return its path."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    manifest.write_text("".join(f"{sha256_file(directory / rel)}  {rel}\n" for rel in _listed_files(directory)))
    return manifest


def verify_manifest(directory: str | Path) -> list[str]:
    """The problems with a directory against its manifest: missing, changed and extra files. Empty = valid."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return [f"{manifest}: no manifest"]
    listed: dict[str, str] = {}
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        sha, sep, rel = line.partition("  ")
        if not sep or len(sha) != 64:
            return [f"{manifest}:{n}: malformed line {line!r}"]
        listed[rel] = sha
    problems = []
    for rel, sha in listed.items():
        if not (directory / rel).is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(directory / rel) != sha:
            problems.append(f"changed: {rel}")
    problems += [f"extra: {rel}" for rel in _listed_files(directory) if rel not in listed]
    return problems


def content_digest(directory: str | Path) -> str:
    """A sealed directory's identity for what reads it: the sha256 of its manifest lines, less the record's."""
    manifest = Path(directory) / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} does not exist: seal the directory first (stage_output / atomic_dir)")
    lines = [line for line in manifest.read_text().splitlines(keepends=True)
             if line.partition("  ")[2].strip() != RECORD]
    return hashlib.sha256("".join(lines).encode()).hexdigest()
