"""Orchestration overhead: the Prefect flow (`minirlhf flow`) against the same stage functions called
directly (`minirlhf run`), each from scratch on the same config in a fresh output directory.

Usage:
    .venv/bin/python bench/flow_overhead.py                       # the demo config, once each
    .venv/bin/python bench/flow_overhead.py --repeats 2 --set ppo.steps=20

Reports the wall time of each command (interpreter start included; the flow's includes starting a
temporary Prefect server when PREFECT_API_URL is unset), the sum of the stage times the store recorded, and
the ratio flow / direct (target <= 1.10). Then a cached rerun of the flow (every stage `Cached`). The stage
times separate orchestration cost from machine noise: on a shared machine compare the "outside stages" column.
Results go to bench/results/flow_overhead.json, each command's output to bench/results/flow_overhead-*.log.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

from minirlhf.store import Store  # noqa: E402


def timed(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}); its output: {log}")
    return time.perf_counter() - started


def stage_seconds(output_dir: Path) -> float:
    """Sum of the stage durations in the store's last run (started_at -> finished_at of each stage run)."""
    df = Store.for_output_dir(output_dir).query(
        "select sum(epoch(finished_at) - epoch(started_at)) as s from stage_runs "
        "where run_id = (select run_id from runs order by started_at desc limit 1)")
    return float(df["s"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    sets = [x for o in args.overrides for x in ("--set", o)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="flow-overhead-") as tmp:
        for i in range(args.repeats):
            for mode in ("flow", "run"):
                out = Path(tmp) / f"{mode}-{i}"
                wall = timed([str(BIN / "minirlhf"), mode, "--config", args.config, *sets,
                              "--set", f"output_dir={out}"],
                             RESULTS / f"flow_overhead-{mode}-{i}.log")
                stages = stage_seconds(out)
                rows.append({"mode": mode, "repeat": i, "wall_s": wall, "stages_s": stages, "outside_s": wall - stages})
                print(f"{mode:>4} #{i}: {wall:7.1f} s wall, {stages:7.1f} s in stages, {wall - stages:5.1f} s outside",
                      flush=True)
        cached = timed([str(BIN / "minirlhf"), "flow", "--config", args.config, *sets,
                        "--set", f"output_dir={Path(tmp) / 'flow-0'}"],
                       RESULTS / "flow_overhead-cached.log")
    flow = [r["wall_s"] for r in rows if r["mode"] == "flow"]
    run = [r["wall_s"] for r in rows if r["mode"] == "run"]
    ratio = min(flow) / min(run)
    print(f"flow / direct = {ratio:.3f} (best of {args.repeats}); cached flow rerun {cached:.1f} s")
    (RESULTS / "flow_overhead.json").write_text(json.dumps({"rows": rows, "ratio": ratio, "cached_rerun_s": cached,
                                                           "config": args.config, "overrides": args.overrides},
                                                          indent=1))


if __name__ == "__main__":
    main()
