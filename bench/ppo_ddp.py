"""Data-parallel PPO against one process on this machine: the same PPO stage with `ppo.nproc` 1 and N.

Usage:
    .venv/bin/python bench/ppo_ddp.py [--config configs/demo.yaml] [--steps 6] [--nproc 2] [--set ...]

It reuses (or builds) the config's data, SFT and reward stages, then runs the PPO stage (`--steps` steps, no
checkpoint reuse: a fresh output root for PPO each time) once per process count and reads the per-step timings
rank 0 logged (ppo/time/rollout_s, ppo/time/update_s). One process keeps torch's default threads; torchrun gives
each rank one thread. Results print as a table and are appended to bench/results/ppo_ddp.jsonl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from minirlhf.config import load_config  # noqa: E402
from minirlhf.pipeline import plan, run_pipeline, run_stage  # noqa: E402
from minirlhf.store import Store  # noqa: E402

from _results import record  # noqa: E402  (bench/_results.py: run as `python bench/<name>.py`)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    base = load_config(args.config, args.set + [f"ppo.steps={args.steps}", f"ppo.checkpoint_every={args.steps}"])
    upstream = run_pipeline(base, ("data", "sft", "reward"))
    rows = []
    for nproc in (1, args.nproc):
        with tempfile.TemporaryDirectory() as root:  # PPO's output and checkpoints: never a cached one
            cfg = base.model_copy(update={"output_dir": Path(root),
                                          "ppo": base.ppo.model_copy(update={"nproc": nproc})})
            spec = plan(cfg, "ppo", upstream)  # its output under the temporary root, its inputs under the config's
            spec.inputs = plan(base.model_copy(update={"ppo": cfg.ppo}), "ppo", upstream).inputs
            store = Store.for_output_dir(root)
            loadavg_before = os.getloadavg()[0]
            started = time.perf_counter()
            with store.run({"bench": "ppo_ddp"}) as run_id:
                run_stage(spec, store, run_id)
            stage_s = time.perf_counter() - started
            timings = store.query("select m.step, m.name, m.value from metrics m join stage_runs s "
                                  "using (stage_run_id) where s.run_id = $r and m.name like 'ppo/time/%'",
                                  {"r": run_id})
        per_step = timings.pivot(index="step", columns="name", values="value").iloc[1:]  # step 1: warm-up
        step_s = statistics.median((per_step["ppo/time/rollout_s"] + per_step["ppo/time/update_s"]).tolist())
        rows.append({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": args.config, "overrides": args.set,
                     "nproc": nproc, "threads_per_process": torch.get_num_threads() if nproc == 1 else 1,
                     "batch_size": cfg.ppo.batch_size, "steps": args.steps, "stage_s": stage_s, "step_s": step_s,
                     "rollout_s": statistics.median(per_step["ppo/time/rollout_s"].tolist()),
                     "update_s": statistics.median(per_step["ppo/time/update_s"].tolist()),
                     "episodes_per_s": cfg.ppo.batch_size / step_s, "loadavg_before": loadavg_before})
    rows[-1]["speedup_vs_1"] = rows[0]["step_s"] / rows[-1]["step_s"]
    record("ppo_ddp", rows)


if __name__ == "__main__":
    sys.exit(main())
