"""Data-parallel PPO (`ppo.nproc` > 1): the stage runs as N processes started by torchrun, one per rank.

Usage:
    minirlhf run --config configs/demo.yaml --set ppo.nproc=2        # run_ppo launches the ranks itself
    python -m torch.distributed.run --standalone --nproc-per-node 2 -m minirlhf.ppo.launch SPEC.json   # by hand

The process that runs the stage (the CLI, a Prefect task) holds the stage lock and its store row, as for any stage;
it writes a spec (config, input dirs, attempt, where to log) and starts torchrun. Every rank builds the trainer
(minirlhf.ppo.distributed shares the work); rank 0 alone logs to the store (the same stage run), writes checkpoints
and the stage output. The launching process then reads the output like any stage's. PPOUnstable raised in the ranks
reaches the launching process as PPOUnstable (its fields through a file rank 0 writes), so a retry resumes from the
last good checkpoint as with one process; a rank killed outright fails the launch, and a retry resumes too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from minirlhf.config import PipelineConfig
from minirlhf.errors import PPOUnstable
from minirlhf.journal import Journal
from minirlhf.stage import MetricLogger, NullLogger, StageResult, load_output

SPEC_SUFFIX = ".launch.json"
UNSTABLE_SUFFIX = ".unstable.json"


def spec_path(out_dir: Path) -> Path:
    out_dir = Path(out_dir).resolve()
    return out_dir.parent / f".{out_dir.name}{SPEC_SUFFIX}"


def unstable_path(spec: Path) -> Path:
    """Where rank 0 leaves a PPOUnstable's fields for the launching process, beside the spec."""
    return spec.with_name(spec.name.replace(SPEC_SUFFIX, UNSTABLE_SUFFIX))


def launch(cfg: PipelineConfig, inputs: dict[str, Path | None], out_dir: Path, logger: MetricLogger,
           attempt: int, inject_nan_at_step: int | None) -> StageResult:
    """Run PPO as `cfg.ppo.nproc` ranks under torchrun and return the output rank 0 wrote."""
    spec = spec_path(out_dir)
    store = getattr(logger, "store", None)
    spec.write_text(json.dumps({
        "config": cfg.model_dump(mode="json"), "out_dir": str(Path(out_dir).resolve()), "attempt": attempt,
        "inject_nan_at_step": inject_nan_at_step, "inputs": {k: str(v) if v else None for k, v in inputs.items()},
        "store": {"path": str(store.path), "lock_timeout_s": store.lock_timeout_s,
                  "journal": isinstance(store, Journal),  # a Ray worker's stage records to its journal
                  "stage_run_id": logger.stage_run_id} if store is not None else None,
    }))
    unstable = unstable_path(spec)
    unstable.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(cfg.ppo.nproc), "-m", "minirlhf.ppo.launch", str(spec)]
    done = subprocess.run(command)  # the ranks' progress line and errors go straight to this console
    if unstable.is_file():
        saved = json.loads(unstable.read_text())
        raise PPOUnstable(saved["cause"], saved["step"], Path(saved["checkpoint"]) if saved["checkpoint"] else None,
                          saved["detail"])
    if done.returncode != 0:
        raise RuntimeError(f"data-parallel PPO: torchrun with {cfg.ppo.nproc} processes exited with status "
                           f"{done.returncode} (a rank failed or was killed; its error is above); a retry resumes "
                           "from the last checkpoint")
    result = load_output(out_dir)
    if result is None:
        raise RuntimeError(f"data-parallel PPO finished but left no complete output at {out_dir}")
    return result


def main(spec_file: str) -> None:
    from minirlhf.ppo import distributed
    from minirlhf.ppo.trainer import run_ppo
    from minirlhf.store import Store, StoreLogger

    spec = json.loads(Path(spec_file).read_text())
    distributed.init_from_env()
    logger: MetricLogger = NullLogger()
    if spec["store"] and distributed.is_main():  # rank 0 records into the launching process's stage run
        where = spec["store"]
        store = Journal(where["path"]) if where["journal"] else Store(where["path"], where["lock_timeout_s"])
        logger = StoreLogger(store, where["stage_run_id"])
    inputs = {k: Path(v) if v else None for k, v in spec["inputs"].items()}
    try:
        run_ppo(PipelineConfig.model_validate(spec["config"]), out_dir=Path(spec["out_dir"]), logger=logger,
                attempt=spec["attempt"], inject_nan_at_step=spec["inject_nan_at_step"], **inputs)
    except PPOUnstable as err:
        if distributed.is_main():
            unstable_path(Path(spec_file)).write_text(json.dumps({
                "cause": err.cause, "step": err.step, "detail": str(err),
                "checkpoint": str(err.last_good_checkpoint) if err.last_good_checkpoint else None}))
        raise


if __name__ == "__main__":
    main(sys.argv[1])
