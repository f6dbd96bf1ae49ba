"""Where a fully cached `make demo` spends its time: the command's wall time, then a breakdown of the same run.

Usage:
    .venv/bin/python bench/cached_rerun.py  # the demo config: run it once (if needed), then 3 cached reruns
    .venv/bin/python bench/cached_rerun.py --repeats 5 --output-dir /tmp/demo

First `minirlhf flow` runs once to fill the cache (skipped when every stage is already complete there). Then
`--repeats` times, in a fresh process each, as `make demo` does:
  1. the command itself, `minirlhf flow --config <config>`, timed from outside (interpreter start included);
  2. the same steps inside one process, timed one by one: interpreter start (wall minus the timed phases),
     importing the CLI, reaching the Prefect server (flows/server.py), importing Prefect and the flow, each stage
     task (from the store's stage_runs rows of that run), Prefect's own work around them, the report, the summary.
Both use the local Prefect server on 127.0.0.1:4200 (started by the first run when nothing answers there), so the
numbers are those of a second `make demo`. Results: bench/results/cached_rerun.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "bench" / "results"


def child(config: str, output_dir: str) -> None:
    """One cached rerun in this process, each phase timed; prints its timings as one JSON line."""
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        phases[name] = time.perf_counter() - started - sum(phases.values())

    sys.path.insert(0, str(REPO))
    import flows.cli as cli  # typer, rich, the library's CLI and config

    cfg = cli._load(Path(config), [f"output_dir={output_dir}"])
    cli.quiet_prefect_console(False)
    lap("import the CLI, load the config")
    cli.choose_server(ephemeral=False)
    lap("reach the Prefect server")
    import flows.pipeline as pipeline  # Prefect, the tasks, the stage protocol (not torch: nothing computes)

    cli.route_library_logs()
    lap("import Prefect and the flow")
    report_s = 0.0

    def timed(fn):
        def wrapper(*args, **kwargs):
            nonlocal report_s
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                report_s += time.perf_counter() - t
        return wrapper

    pipeline.report_of_outputs = timed(pipeline.report_of_outputs)
    flow_started = time.perf_counter()
    state = pipeline.rlhf_pipeline(cfg, return_state=True)
    results = state.result()
    lap("the flow run")
    cli.print_results(cfg, results, time.perf_counter() - flow_started)
    lap("print the summary")
    from minirlhf.store import Store

    run_id = next(iter(results.values())).run_id
    stages = Store.for_config(cfg).query("select stage, epoch(finished_at) - epoch(started_at) as s from stage_runs "
                                         "where run_id = ? order by started_at", [run_id])
    print("TIMINGS " + json.dumps({"phases": phases, "report_s": report_s,
                                   "stages": dict(zip(stages["stage"], stages["s"]))}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--output-dir", default="artifacts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.config, args.output_dir)
    command = [str(BIN / "minirlhf"), "flow", "--config", args.config, "--set", f"output_dir={args.output_dir}"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)  # fill the cache (a no-op when it is full)
    walls, inside = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        walls.append(time.perf_counter() - t)
        t = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", "--config", args.config,
                               "--output-dir", args.output_dir],
                              cwd=REPO, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t
        timings = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("TIMINGS "))[8:])
        timings["phases"] = {"interpreter start and exit": wall - sum(timings["phases"].values()), **timings["phases"]}
        inside.append(timings)
    rows = [(name, statistics.median(t["phases"][name] for t in inside)) for name in inside[0]["phases"]]
    flow = next(s for name, s in rows if name == "the flow run")
    stages = {name: statistics.median(t["stages"][name] for t in inside) for name in inside[0]["stages"]}
    report = statistics.median(t["report_s"] for t in inside)
    print(f"`minirlhf flow`, every stage cached: median {statistics.median(walls):.1f} s of {args.repeats} "
          f"({', '.join(f'{w:.1f}' for w in walls)} s)\n")
    print(f"{'phase (median of ' + str(args.repeats) + ')':<44} {'s':>6}")
    for name, s in rows:
        print(f"{name:<44} {s:6.2f}")
        if name == "the flow run":
            for stage, seconds in stages.items():
                print(f"  {'task ' + stage + ' (its stage_runs row)':<42} {seconds:6.2f}")
            print(f"  {'the report (reused when no output changed)':<42} {report:6.2f}")
            print(f"  {'Prefect and the store around them':<42} {flow - sum(stages.values()) - report:6.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cached_rerun.json").write_text(json.dumps({"walls": walls, "inside": inside}, indent=1))


if __name__ == "__main__":
    main()
