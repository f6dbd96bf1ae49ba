"""Stage tasks on Ray (flows/ray_runner.py) against a local Ray instance of 2 CPUs started by the test, and a real
Prefect server: the tiny pipeline on Ray equals the local run bit for bit, a 2-point sweep runs both PPO points at
once, a Ray worker SIGKILLed mid-PPO is re-run and resumes from its checkpoint, and bad setup fails in one line.

Workers never open DuckDB: they journal their rows and the flow process ingests them (tests/test_journal.py), so
every check of the store below reads what the one writer replayed.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from minirlhf.config import PipelineConfig, load_config
from minirlhf.journal import DIED, JOURNAL_DIRNAME
from minirlhf.pipeline import enabled_stages
from minirlhf.stage import load_output
from minirlhf.store import Store
from tests.conftest import REPO, skip_or_fail_in_ci
from tests.test_ppo import TINY

pytestmark = pytest.mark.e2e
RAY = ["runner.kind=ray", "runner.ray_num_cpus=2"]

try:
    from flows.ray_runner import RunnerSetupError, check_setup, prefect_api_url, start_ray, worker_probe
    from flows.sweep import overoptimization_sweep
    import prefect_ray  # noqa: F401
except ImportError as err:  # the `ray` extra (make test installs it)
    pytestmark = [pytestmark, pytest.mark.skipif(True, reason=f"prefect-ray not installed ({err})")]


@pytest.fixture(scope="module")
def ray_cluster(prefect_harness):
    """A Prefect server (conftest.prefect_harness), and a local Ray instance of 2 CPUs every flow of this module
    joins."""
    if os.environ.get("CI"):
        try:
            import ray  # noqa: F401
        except ImportError:
            skip_or_fail_in_ci("ray is not installed: make test installs the `ray` extra")
    runner = start_ray(load_config(None, RAY), [])
    yield
    runner.__exit__(None, None, None)


def stage_rows(root: Path, run_id: str | None = None) -> list[dict]:
    where = "where run_id = ?" if run_id else ""
    return Store.for_output_dir(root).query(f"select * from stage_runs {where} order by started_at",
                                            [run_id] if run_id else None).to_dict("records")


def last_run_id(root: Path) -> str:
    return Store.for_output_dir(root).query("select run_id from runs order by started_at desc limit 1")["run_id"][0]


def torch_default_threads() -> int:
    """The torch threads a fresh process uses here (what `minirlhf run` computed the session's tiny run with)."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.fixture(scope="module")
def ray_run(ray_cluster, tmp_path_factory) -> tuple[PipelineConfig, dict]:
    """The tiny pipeline (tests/test_ppo.py TINY, the config of the session's `minirlhf run`, conftest.tiny_cli_run)
    as a flow on Ray. Each task computes with as many torch threads as that local run had: torch's CPU kernels
    split reductions by thread count (SFT at 1 and at 2 threads differs in the last bits)."""
    from flows.pipeline import rlhf_pipeline

    threads = torch_default_threads()
    cfg = load_config(None, TINY + RAY + [f"runner.threads_per_cpu={threads}",
                                          f"output_dir={tmp_path_factory.mktemp('ray') / 'artifacts'}"])
    started = time.perf_counter()
    results = rlhf_pipeline(cfg)
    print(f"\ntiny pipeline on Ray (2 workers, {threads} torch threads each): {time.perf_counter() - started:.1f} s")
    return cfg, results


def test_pipeline_on_ray_equals_the_local_run(ray_run, tiny_cli_run):
    cfg, on_ray = ray_run
    local_root = tiny_cli_run[0]  # `minirlhf run` of the same config, one stage after another in one process
    stages = list(enabled_stages(cfg))
    assert list(on_ray) == stages
    for stage in stages:  # same key, same content digest (weights, samples, metrics files): one cache for both modes
        local = load_output(local_root / stage / on_ray[stage].key)
        assert local is not None, f"{stage}: the local run has no output under the Ray run's key"
        assert on_ray[stage].sha256 == local.sha256, stage
    weights = [root / "ppo" / on_ray["ppo"].key / "model.safetensors" for root in (cfg.output_dir, local_root)]
    assert weights[0].read_bytes() == weights[1].read_bytes()
    print(f"ppo sha256 (Ray and local): {on_ray['ppo'].sha256}")

    # The store, written by the flow process alone from the workers' journals: one completed row per stage, with
    # the workers' times, and PPO's per-step curve.
    rows = stage_rows(cfg.output_dir)
    assert sorted(r["stage"] for r in rows) == sorted(stages)
    assert all(r["status"] == "completed" and not r["cache_hit"] and r["task_run_id"] for r in rows)
    ppo_row = next(r for r in rows if r["stage"] == "ppo")
    steps = Store.for_output_dir(cfg.output_dir).query(
        "select distinct step from metrics where stage_run_id = ? and name = 'ppo/kl' order by step",
        [ppo_row["stage_run_id"]])["step"].tolist()
    assert steps == list(range(1, cfg.ppo.steps + 1))
    assert not list((Path(cfg.output_dir) / JOURNAL_DIRNAME).rglob("*.jsonl"))  # every journal ingested
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["reward"]["finished_at"] <= by_stage["ppo"]["started_at"]  # a wave waits for its upstream


def overlap(a: dict, b: dict) -> float:
    """Seconds two stage runs ran at the same time (negative: apart)."""
    return (min(a["finished_at"], b["finished_at"]) - max(a["started_at"], b["started_at"])).total_seconds()


def test_two_sweep_points_run_at_once(ray_run):
    cfg, _ = ray_run
    cfg = load_config(None, TINY + RAY + [f"output_dir={cfg.output_dir}", "ppo.steps=16"])
    started = time.perf_counter()
    result = overoptimization_sweep(cfg, kl_coefs=[0.3, 0.03])
    seconds = time.perf_counter() - started
    rows = stage_rows(cfg.output_dir, last_run_id(cfg.output_dir))
    ppo = [r for r in rows if r["stage"] == "ppo"]
    assert len(ppo) == 2 and all(r["status"] == "completed" and not r["cache_hit"] for r in ppo)
    assert [r["cache_hit"] for r in rows if r["stage"] in ("data", "sft", "reward")] == [True] * 3
    both = overlap(*ppo)
    print(f"\n2-point sweep on Ray: {seconds:.1f} s; the two PPO runs overlapped {both:.1f} s of "
          f"{[round((r['finished_at'] - r['started_at']).total_seconds(), 1) for r in ppo]} s")
    assert both > 0, ppo
    assert {r["stage"] for r in rows} >= {"eval", "sweep"} and "sweep/fit/proxy/alpha" in result.metrics


def test_a_killed_ray_worker_is_rerun_and_ppo_resumes(ray_run):
    from flows.pipeline import rlhf_pipeline

    cfg, _ = ray_run
    cfg = load_config(None, TINY + RAY + [f"output_dir={cfg.output_dir}", "ppo.steps=12", "ppo.checkpoint_every=3",
                                          "dpo.enabled=false", "rloo.enabled=false"])
    killed: dict[str, float] = {}
    earlier = set(Path(cfg.output_dir).glob("ppo/*.checkpoints/step-000006"))  # the sweep's PPO runs

    def kill_ppo_worker() -> None:  # the Ray worker process running the ppo task, once its step-6 checkpoint exists
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if set(Path(cfg.output_dir).glob("ppo/*.checkpoints/step-000006")) - earlier:
                pids = subprocess.run(["pgrep", "-f", "^ray::ppo"], capture_output=True, text=True).stdout.split()
                if pids:
                    os.kill(int(pids[0]), signal.SIGKILL)
                    killed["pid"] = int(pids[0])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_ppo_worker, daemon=True)
    killer.start()
    results = rlhf_pipeline(cfg)
    killer.join(5)
    assert "pid" in killed, "the ppo worker was never seen"
    resumed = int(results["ppo"].metrics["ppo/resumed_from_step"])
    assert 6 <= resumed < cfg.ppo.steps and results["ppo"].step == cfg.ppo.steps
    rows = [r for r in stage_rows(cfg.output_dir, last_run_id(cfg.output_dir)) if r["stage"] == "ppo"]
    assert [r["status"] for r in rows] == ["failed", "completed"]
    assert rows[0]["cause"].startswith(DIED.split("(")[0]) and rows[0]["finished_at"] <= rows[1]["finished_at"]
    steps = Store.for_output_dir(cfg.output_dir).query(
        "select min(step) first, max(step) last from metrics where stage_run_id = ? and name = 'ppo/kl'",
        [rows[1]["stage_run_id"]])
    assert (int(steps["first"][0]), int(steps["last"][0])) == (resumed + 1, cfg.ppo.steps)
    print(f"\nkilled Ray worker {killed['pid']} after step 6's checkpoint; the re-run resumed from step {resumed}")


# ---- bad setup: one line, before any stage ----------------------------------------------------------------------
def test_unreachable_ray_address_is_one_line_and_records_nothing(ray_cluster, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url(), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "flow", "--runner", "ray", "--ray-address",
                           "127.0.0.1:1", "--set", f"output_dir={tmp_path}"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "runner.ray_address=127.0.0.1:1: no Ray cluster answers there" in lines[0], lines
    assert not (tmp_path / "rlhf.duckdb").exists()


def test_more_gpus_than_the_cluster_has_is_refused(ray_cluster):
    cfg = load_config(None, RAY + ["runner.resources={ppo: {num_gpus: 1}}"])
    with pytest.raises(RunnerSetupError, match="stage ppo asks for 1 GPUs .* but the Ray cluster has 0"):
        check_setup(cfg, ["data", "ppo"])
    check_setup(load_config(None, RAY), ["data", "ppo"])  # 1 CPU each, no GPU: fine


def test_no_prefect_server_for_the_workers_is_refused(ray_cluster, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(RunnerSetupError, match="needs a Prefect server the workers can reach"):
            start_ray(load_config(None, RAY), ["data"])


def test_worker_probe_names_what_a_worker_cannot_reach(ray_cluster, tmp_path):
    import ray

    token = tmp_path / ".probe-x"
    token.write_text(token.name)
    assert ray.get(ray.remote(num_cpus=0)(worker_probe).remote(str(token), prefect_api_url())) == []
    problems = worker_probe(str(tmp_path / "elsewhere" / ".probe-y"), "http://127.0.0.1:1/api")
    assert len(problems) == 2
    assert "cannot see the output root" in problems[0] and "cannot reach the Prefect server" in problems[1]
