"""The pipeline under a real Prefect server (e2e tier): `prefect server start` on loopback with a temporary
PREFECT_HOME, flows run as separate processes (`minirlhf flow`) or by a process worker from prefect.yaml.

- a flow SIGKILLed during PPO, then rerun: data/SFT/RM come back Cached, PPO resumes from its checkpoint,
  and the metrics of the PPO stage hold every step once per stage run and none missing;
- two flow runs at once on one store: both complete with all their rows (stage lock + short DuckDB writes);
- `prefect deploy --all` from prefect.yaml, a process worker, `prefect deployment run` with a parameter
  override, then the DuckDB rows of that flow run.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minirlhf.config import load_config
from minirlhf.pipeline import enabled_stages
from minirlhf.store import Store
from tests.conftest import stop_process
from tests.test_ppo import TINY

STAGES = enabled_stages(load_config(None))  # the demo's stages (the ensemble is off)

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FLOW_TIMEOUT_S = 900  # a tiny flow takes ~30-60 s here; generous for a loaded 2-core CI machine


def _overrides(output_dir: Path, *extra: str) -> list[str]:
    args = []
    for item in [*TINY, *extra, f"output_dir={output_dir}"]:
        args += ["--set", item]
    return args


def _start_flow(env: dict, output_dir: Path, *extra: str, log_name: str = "flow") -> subprocess.Popen:
    output_dir.mkdir(parents=True, exist_ok=True)
    log = (output_dir.parent / f"{output_dir.name}-{log_name}.log").open("w")
    return subprocess.Popen([BIN / "minirlhf", "flow", *_overrides(output_dir, *extra)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(proc: subprocess.Popen, output_dir: Path, log_name: str = "flow") -> None:
    try:
        rc = proc.wait(FLOW_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_process(proc, signal.SIGKILL)
        rc = "timeout"
    log = (output_dir.parent / f"{output_dir.name}-{log_name}.log").read_text()
    assert rc == 0, f"minirlhf flow ended with {rc}:\n{log[-4000:]}"


def _seed_upstream(output_dir: Path, computed: Path) -> None:
    """Copy data, SFT and the reward model of the session's tiny run (conftest.tiny_cli_run, the same config for
    them) into a fresh root: the flow reuses them from the files, and the test's time goes to what it is about."""
    for stage in ("data", "sft", "reward"):
        shutil.copytree(computed / stage, output_dir / stage)


def _runs(output_dir: Path):
    return Store.for_output_dir(output_dir).query("select * from runs order by started_at")


def _stage_runs(output_dir: Path, run_id: str) -> dict[str, list[dict]]:
    rows = Store.for_output_dir(output_dir).query(
        "select * from stage_runs where run_id = ? order by started_at", [run_id]).to_dict("records")
    by_stage: dict[str, list[dict]] = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    return by_stage


def test_sigkilled_flow_resumes_ppo_from_its_checkpoint(server_env, tmp_path, tiny_cli_run):
    out = tmp_path / "killed"
    _seed_upstream(out, tiny_cli_run[0])
    settings = ("ppo.steps=30", "ppo.checkpoint_every=3", "ppo.keep_checkpoints=2")  # ~8 steps/s here
    proc = _start_flow(server_env, out, *settings)
    deadline = time.monotonic() + FLOW_TIMEOUT_S
    while not list(out.glob("ppo/*.checkpoints/step-000006/COMPLETE")):  # PPO is half way: kill the flow
        assert proc.poll() is None, (out.parent / "killed-flow.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "PPO never reached its step-6 checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole flow process, mid-PPO: no cleanup runs
    proc.wait()
    killed = _runs(out)
    assert killed["status"].tolist() == ["running"]  # nobody lived to finish it

    _wait(_start_flow(server_env, out, *settings, log_name="rerun"), out, "rerun")
    runs = _runs(out)
    assert runs["status"].tolist() == ["abandoned", "completed"]  # the rerun found its process dead
    rerun = _stage_runs(out, runs["run_id"].iloc[1])
    assert [rerun[s][0]["cache_hit"] for s in ("data", "sft", "reward")] == [True] * 3
    assert [rerun[s][0]["status"] for s in STAGES] == ["completed"] * len(STAGES)
    ppo = rerun["ppo"][0]
    assert not ppo["cache_hit"] and ppo["attempt"] == 1

    store = Store.for_output_dir(out)
    resumed_from = store.query("select value from metrics where stage_run_id = ? and name = 'ppo/resumed_from_step'",
                               [ppo["stage_run_id"]])["value"].tolist()
    assert resumed_from and 6 <= resumed_from[0] < 30  # step 6, or a later checkpoint that landed before the kill
    dupes = store.query("select stage_run_id, step, name, count(*) as n from metrics group by all having n > 1")
    assert dupes.empty, dupes
    # Every PPO step is in the store: up to the checkpoint from the killed run, after it from the resumed one.
    killed_ppo = _stage_runs(out, runs["run_id"].iloc[0])["ppo"][0]
    steps = {}
    for row in (killed_ppo, ppo):
        steps[row["stage_run_id"]] = set(store.query(
            "select step from metrics where stage_run_id = ? and name = 'ppo/kl'", [row["stage_run_id"]])["step"])
    resumed = int(resumed_from[0])
    assert set(range(1, resumed + 1)) <= steps[killed_ppo["stage_run_id"]]
    assert steps[ppo["stage_run_id"]] == set(range(resumed + 1, 31))
    print(f"\nflow killed during PPO; the rerun resumed from step {resumed}")


def test_two_flows_at_once_both_complete_with_all_rows(server_env, tmp_path):
    """Same store, same data/SFT/RM (one computes them, the other waits on the stage lock and reuses them),
    two PPO runs with different KL coefficients writing metrics at the same time."""
    out = tmp_path / "concurrent"
    procs = [_start_flow(server_env, out, f"ppo.kl_coef={kl}", log_name=f"kl{kl}") for kl in (0.1, 0.3)]
    for proc, kl in zip(procs, (0.1, 0.3)):
        _wait(proc, out, f"kl{kl}")
    runs = _runs(out)
    assert runs["status"].tolist() == ["completed", "completed"]
    assert runs["prefect_flow_run_id"].notna().all()
    store = Store.for_output_dir(out)
    ppo_keys = set()
    for run_id in runs["run_id"]:
        rows = _stage_runs(out, run_id)
        assert [rows[s][-1]["status"] for s in STAGES] == ["completed"] * len(STAGES)
        ppo_keys.add(rows["ppo"][-1]["output_dir"])
        n_steps = store.query("select count(distinct step) as n from metrics where stage_run_id = ? "
                              "and name = 'ppo/kl'",
                              [rows["ppo"][-1]["stage_run_id"]])["n"][0]
        assert n_steps == load_config(None, TINY).ppo.steps
        assert store.query("select count(*) as n from metrics where stage_run_id = ? and name like 'eval/ppo/%'",
                           [rows["eval"][-1]["stage_run_id"]])["n"][0] > 0
    assert len(ppo_keys) == 2
    sft_rows = store.query("select cache_hit from stage_runs where stage = 'sft' "
                           "order by started_at")["cache_hit"].tolist()
    assert sorted(sft_rows) == [False, True]  # trained once, reused once


def test_deployment_run_from_prefect_yaml_with_a_process_worker(server_env, tmp_path, tiny_cli_run):
    def prefect(*args: str) -> str:
        done = subprocess.run([BIN / "prefect", *args], cwd=REPO, env=server_env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    prefect("work-pool", "create", "minirlhf-pool", "--type", "process")
    prefect("work-pool", "create", "minirlhf-gpu-pool", "--type", "process")  # rlhf-sweep-ray's (README)
    deployed = prefect("--no-prompt", "deploy", "--all")
    assert "rlhf-sweep-ray" in deployed and "minirlhf-gpu-pool" in deployed
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([BIN / "prefect", "worker", "start", "--pool", "minirlhf-pool"], cwd=REPO, env=server_env,
                              stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    out = tmp_path / "deployed"
    _seed_upstream(out, tiny_cli_run[0])
    config = load_config(None, [*TINY, "name=deployed", f"output_dir={out}"]).model_dump(mode="json")
    try:
        started = prefect("deployment", "run", "rlhf-pipeline/rlhf-demo", "--params", json.dumps({"config": config}),
                          "--watch", "--watch-timeout", str(FLOW_TIMEOUT_S))
    finally:
        stop_process(worker)
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started).group(1)

    store = Store.for_output_dir(out)
    run = store.query("select * from runs where prefect_flow_run_id = ?", [flow_run_id]).to_dict("records")
    assert len(run) == 1, (tmp_path / "worker.log").read_text()[-4000:]
    run = run[0]
    assert run["status"] == "completed" and run["deployment"] == "rlhf-demo"
    assert json.loads(run["parameters"])["config"]["name"] == "deployed"  # the override reached the flow
    assert json.loads(run["config"])["ppo"]["steps"] == config["ppo"]["steps"]
    rows = _stage_runs(out, run["run_id"])
    assert list(rows) == list(STAGES)
    assert all(r[0]["status"] == "completed" and r[0]["task_run_id"] for r in rows.values())
    assert store.query("select count(*) as n from artifacts a join stage_runs s using (stage_run_id) "
                       "where s.run_id = ?",
                       [run["run_id"]])["n"][0] == len(STAGES)
    gold = store.query("select value from metrics where stage_run_id = ? and name = 'eval/ppo/gold_reward'",
                       [rows["eval"][0]["stage_run_id"]])
    assert len(gold) == 1
