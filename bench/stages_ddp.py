"""The TRL stages data parallel against one process on this machine: each stage with `<stage>.nproc` 1 and N.

Usage:
    .venv/bin/python bench/stages_ddp.py [--config configs/demo.yaml] [--stages sft,reward,dpo] [--nproc 2] [--set ...]

It reuses (or builds) the stages' upstream in the config's output root, then computes each stage (never a cached
output: a fresh temporary output root each time) once per process count: the stage's wall time (torchrun start-up,
model loading and saving included) and the Trainer's own train_runtime and train_samples_per_second, which rank 0
logged. One process keeps torch's default threads; torchrun gives each rank one thread. Results print as a table
and are appended to bench/results/stages_ddp.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from minirlhf.config import load_config  # noqa: E402
from minirlhf.pipeline import STAGES, plan, run_pipeline, run_stage  # noqa: E402
from minirlhf.store import Store  # noqa: E402

from _results import record  # noqa: E402  (bench/_results.py: run as `python bench/<name>.py`)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--stages", default="sft,reward,dpo")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    base = load_config(args.config, args.set)
    stages = args.stages.split(",")
    upstream = run_pipeline(base, tuple(sorted({u for s in stages for u in STAGES[s].upstream
                                                if u in ("data", "sft", "reward")})))
    rows = []
    for stage in stages:
        for nproc in (1, args.nproc):
            section = getattr(base, stage).model_copy(update={"nproc": nproc})
            with tempfile.TemporaryDirectory() as root:  # the stage's output: never a cached one
                cfg = base.model_copy(update={"output_dir": Path(root), stage: section})
                spec = plan(cfg, stage, upstream)  # its output under the temporary root, its inputs under the config's
                spec.inputs = plan(base.model_copy(update={stage: section}), stage, upstream).inputs
                store = Store.for_output_dir(root)
                started = time.perf_counter()
                with store.run({"bench": "stages_ddp"}) as run_id:
                    result = run_stage(spec, store, run_id)
                stage_s = time.perf_counter() - started
                # the Trainer's summary; the reward stage names its training logs reward/train_<name>
                logged = store.query("select m.name, m.value from metrics m join stage_runs s using (stage_run_id) "
                                     "where s.run_id = $r and (m.name like '%train_runtime' "
                                     "or m.name like '%train_samples_per_second')", {"r": run_id})
            values = {("runtime" if name.endswith("runtime") else "samples_per_s"): value
                      for name, value in zip(logged["name"], logged["value"])}
            rows.append({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": args.config, "overrides": args.set,
                         "stage": stage, "nproc": nproc,
                         "threads_per_process": torch.get_num_threads() if nproc == 1 else 1,
                         "batch_size": section.batch_size, "steps": result.step, "stage_s": stage_s,
                         "train_runtime_s": values.get("runtime"), "samples_per_s": values.get("samples_per_s")})
        rows[-1]["train_speedup_vs_1"] = rows[-2]["train_runtime_s"] / rows[-1]["train_runtime_s"]
    record("stages_ddp", rows, hidden=("when", "overrides", "config"))


if __name__ == "__main__":
    sys.exit(main())
