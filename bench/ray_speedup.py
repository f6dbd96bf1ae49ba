"""Stage tasks on a local Ray instance against one process: the over-optimisation sweep and the pipeline's policies.

Usage:
    .venv/bin/python bench/ray_speedup.py [--config configs/demo.yaml] [--kl-coefs 0.5,0.2,0.1,0.05,0.02,0.01]
                                          [--workers 2] [--what sweep,pipeline] [--set ...]

The shared stages (data, SFT, reward model) are computed once in a base root; each measurement copies that root
and times one command as a user runs it (`minirlhf sweep` / `minirlhf flow`, process start and Ray start included):
`--runner local` (one stage after another, torch's default threads) against `--runner ray` with a local Ray
instance of `--workers` CPUs (one task per CPU, one torch thread each). What each computes: the sweep, one PPO and
one evaluation per kl_coef; the pipeline, PPO, DPO and RLOO (a wave on Ray) and the evaluation. The stages' own
seconds come from the store. Results print as a table and are appended to bench/results/ray_speedup.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minirlhf.config import load_config
from minirlhf.pipeline import run_pipeline
from minirlhf.store import Store

SHARED = ("data", "sft", "reward")


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def stage_seconds(root: Path) -> dict[str, float]:
    """Seconds per computed stage (summed over stages of the same name) of the last run in a root."""
    frame = Store.for_output_dir(root).query(
        "select stage, sum(epoch(finished_at) - epoch(started_at)) s from stage_runs where not cache_hit and "
        "run_id = (select run_id from runs order by started_at desc limit 1) group by stage")
    return {row.stage: round(float(row.s), 1) for row in frame.itertuples()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--kl-coefs", default="0.5,0.2,0.1,0.05,0.02,0.01")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--what", default="sweep,pipeline")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    minirlhf = str(Path(sys.executable).with_name("minirlhf"))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        run_pipeline(load_config(args.config, args.set + [f"output_dir={base}"]), SHARED)
        rows = []
        for what in args.what.split(","):
            command = {"sweep": ["sweep", "--kl-coefs", args.kl_coefs], "pipeline": ["flow"]}[what]
            seconds = {}
            for runner in ("local", "ray"):
                root = Path(tmp) / f"{what}-{runner}"
                shutil.copytree(base, root)
                extra = ["--runner", "ray", "--set", f"runner.ray_num_cpus={args.workers}"] if runner == "ray" else []
                sets = [a for s in [*args.set, f"output_dir={root}"] for a in ("--set", s)]
                seconds[runner] = timed([minirlhf, *command, "--config", args.config, *sets, *extra])
                rows.append({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "what": what, "runner": runner,
                             "workers": args.workers if runner == "ray" else 1, "config": args.config,
                             "overrides": args.set, "kl_coefs": args.kl_coefs if what == "sweep" else None,
                             "wall_s": round(seconds[runner], 1), "stage_s": stage_seconds(root),
                             "loadavg_1m": os.getloadavg()[0]})
            rows[-1]["speedup"] = round(seconds["local"] / seconds["ray"], 2)
    out = Path(__file__).with_name("results") / "ray_speedup.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{'what':<9} {'runner':<6} {'wall s':>8} {'speed-up':>9}  stage seconds")
    for row in rows:
        print(f"{row['what']:<9} {row['runner']:<6} {row['wall_s']:>8.1f} {row.get('speedup', ''):>9}  "
              f"{row['stage_s']}")


if __name__ == "__main__":
    main()
