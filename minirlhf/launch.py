"""Data-parallel stages (`<stage>.nproc` > 1): a stage runs as N processes started by torchrun, one per rank.

Usage:
    minirlhf run --config configs/demo.yaml --set ppo.nproc=2 --set sft.nproc=2   # run_stage launches the ranks
    python -m torch.distributed.run --standalone --nproc-per-node 2 -m minirlhf.launch SPEC.json   # by hand

The stage runner (minirlhf.pipeline.run_stage: the CLI, a Prefect task) holds the stage lock and its store row, as
for any stage; it writes a spec (the stage function, config, input dirs, its keyword arguments, where to log) and
starts torchrun. Every rank joins the process group (minirlhf.distributed: gloo on CPU, nccl on GPUs) and calls the
same stage function: our PPO shares the batch itself, the TRL stages (SFT, reward, DPO, RLOO, GRPO) get their data
parallelism from accelerate, which finds the process group made. Rank 0 alone logs to the store (the runner's stage
run), writes checkpoints and the stage output (minirlhf.stage.stage_output gives the other ranks a scratch folder
outside the output root); the runner then reads the output like any stage's. PPOUnstable raised in the ranks
reaches the runner as PPOUnstable (its fields through a file rank 0 writes), so a retry resumes from the last good
checkpoint as with one process; a rank killed outright fails the launch, and a retry resumes too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from minirlhf.config import PipelineConfig
from minirlhf.console import quiet_libraries
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


def launch(stage: str, nproc: int, cfg: PipelineConfig, out_dir: Path, logger: MetricLogger,
           inputs: dict[str, Path | None], **kwargs) -> StageResult:
    """Run the function of `stage` (minirlhf.pipeline.STAGES) as `nproc` ranks under torchrun, each called with
    (cfg, out_dir=..., logger=..., **inputs, **kwargs), and return the output rank 0 wrote."""
    spec = spec_path(out_dir)
    store = getattr(logger, "store", None)
    spec.write_text(json.dumps({
        "stage": stage, "config": cfg.model_dump(mode="json"), "out_dir": str(Path(out_dir).resolve()),
        "inputs": {k: str(v) if v else None for k, v in inputs.items()}, "kwargs": kwargs,
        "store": {"path": str(store.path), "lock_timeout_s": store.lock_timeout_s,
                  "journal": isinstance(store, Journal),  # a Ray worker's stage records to its journal
                  "stage_run_id": logger.stage_run_id} if store is not None else None,
    }))
    unstable = unstable_path(spec)
    unstable.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "minirlhf.launch", str(spec)]
    # One torch thread per rank unless the user says otherwise (torchrun's own default, set here so that it does
    # not print its banner about it): N ranks on N cores.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(command, env=env)  # the ranks' progress line and errors go straight to this console
    if unstable.is_file():
        saved = json.loads(unstable.read_text())
        raise PPOUnstable(saved["cause"], saved["step"], Path(saved["checkpoint"]) if saved["checkpoint"] else None,
                          saved["detail"])
    if done.returncode != 0:
        raise RuntimeError(f"data-parallel {stage}: torchrun with {nproc} processes exited with status "
                           f"{done.returncode} (a rank failed or was killed; its error is above); a retry "
                           "computes the stage again (PPO: from its last checkpoint)")
    result = load_output(out_dir)
    if result is None:
        raise RuntimeError(f"data-parallel {stage} finished but left no complete output at {out_dir}")
    return result


def main(spec_file: str) -> None:
    import torch.distributed as dist

    from minirlhf import distributed
    from minirlhf.pipeline import STAGES  # here: the pipeline imports this module
    from minirlhf.store import Store, StoreLogger

    spec = json.loads(Path(spec_file).read_text())
    distributed.init_from_env()
    logger: MetricLogger = NullLogger()
    if spec["store"] and distributed.is_main():  # rank 0 records into the launching process's stage run
        where = spec["store"]
        store = Journal(where["path"]) if where["journal"] else Store(where["path"], where["lock_timeout_s"])
        logger = StoreLogger(store, where["stage_run_id"])
    function = STAGES[spec["stage"]].function()
    inputs = {k: Path(v) if v else None for k, v in spec["inputs"].items()}
    try:
        with quiet_libraries():  # as run_stage does around a stage in its own process
            function(PipelineConfig.model_validate(spec["config"]), out_dir=Path(spec["out_dir"]), logger=logger,
                     **inputs, **spec["kwargs"])
    except PPOUnstable as err:
        if distributed.is_main():
            unstable_path(Path(spec_file)).write_text(json.dumps({
                "cause": err.cause, "step": err.step, "detail": str(err),
                "checkpoint": str(err.last_good_checkpoint) if err.last_good_checkpoint else None}))
        raise
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
