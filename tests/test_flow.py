"""The Prefect flow end to end (e2e tier) on a tiny config, against a temporary Prefect server:
first run computes every stage, a rerun is answered from the cache, a deleted SFT file is recomputed
(and what depends on it), an unstable PPO attempt is retried from its checkpoint; plus prefect.yaml.

The tests run in file order on one output directory (module fixtures): each leaves it complete.
"""

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun
from prefect.states import Completed, Failed

from flows.pipeline import policy_comparison, rlhf_pipeline
from minirlhf.config import PipelineConfig, load_config
from minirlhf.errors import PPOUnstable
from minirlhf.pipeline import enabled_stages, plan, run_pipeline
from minirlhf.ppo.trainer import TEST_NAN_AT_STEP_ENV, checkpoint_dir_for
from minirlhf.stage import StageResult, is_complete, load_output
from minirlhf.store import Store, StoreLocked
from tasks import RESULTS_DIRNAME, retry_condition
from tests.test_ppo import TINY

DEMO_STAGES = enabled_stages(load_config(None))  # the demo's stages (the ensemble is off)

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]


@dataclass
class FlowRun:
    """One flow run as the tests see it: its results, its task runs in Prefect, its rows in the store."""

    flow_run_id: str
    results: dict[str, StageResult]
    seconds: float
    task_runs: dict[str, TaskRun]  # stage -> its last task run in this flow run
    stage_runs: list[dict]  # stage_runs rows of this flow run, in start order

    def states(self) -> dict[str, str]:
        return {stage: tr.state.name for stage, tr in self.task_runs.items()}

    def rows(self, stage: str) -> list[dict]:
        return [r for r in self.stage_runs if r["stage"] == stage]


def run_flow(cfg: PipelineConfig) -> FlowRun:
    started = time.perf_counter()
    state = rlhf_pipeline(cfg, return_state=True)
    seconds = time.perf_counter() - started
    results = state.result()  # raises if the flow failed
    flow_run_id = str(state.state_details.flow_run_id)
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    by_stage = {tr.name.rsplit("-", 1)[0]: tr for tr in sorted(task_runs, key=lambda tr: tr.created)}
    rows = Store.for_output_dir(cfg.output_dir).query(
        "select s.* from stage_runs s join runs r using (run_id) where r.prefect_flow_run_id = ? order by s.started_at",
        [flow_run_id]).to_dict("records")
    return FlowRun(flow_run_id, results, seconds, by_stage, rows)


@pytest.fixture(scope="module")
def prefect_server(prefect_harness):
    """Prefect's test server and database (conftest.prefect_harness, one per session)."""
    yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> PipelineConfig:
    return load_config(None, TINY + [f"output_dir={tmp_path_factory.mktemp('flow')}"])


@pytest.fixture(scope="module")
def first_run(prefect_server, tiny) -> FlowRun:
    return run_flow(tiny)


def test_first_run_computes_every_stage_and_records_lineage(first_run, tiny):
    assert first_run.states() == {s: "Completed" for s in DEMO_STAGES}
    rows = first_run.stage_runs
    assert [r["stage"] for r in rows] == list(DEMO_STAGES)
    assert all(r["status"] == "completed" and not r["cache_hit"] and r["attempt"] == 1 for r in rows)
    for r in rows:  # lineage: the task run, and one key for the cache file, the output folder and the store
        assert r["task_run_id"] == str(first_run.task_runs[r["stage"]].id)
        key = first_run.results[r["stage"]].key
        assert r["cache_key"] == key == plan(tiny, r["stage"], first_run.results).key
        assert Path(r["output_dir"]).name == key
        record = json.loads((tiny.output_dir / RESULTS_DIRNAME / key).read_text())  # JSON, not a pickle
        assert record["metadata"]["serializer"]["type"] == "json"
    store = Store.for_output_dir(tiny.output_dir)
    run = store.query("select run_id, status, deployment, parameters from runs where prefect_flow_run_id = ?",
                      [first_run.flow_run_id])
    assert run["status"].tolist() == ["completed"] and run["deployment"].isna().all()
    for stage, result in first_run.results.items():
        assert is_complete(result.path(tiny.output_dir)) and not result.cache_hit, stage
    assert "eval/ppo/gold_reward" in first_run.results["eval"].metrics

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[first_run.flow_run_id])))
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {"demo-summary", "demo-policies", "demo-dashboard", "demo-report"}
    run_id = run["run_id"][0]
    # minirlhf report, also written to <output_dir>/report/report.md: the same text, but the UI cannot load local
    # PNGs, so where report.md embeds a figure the artifact links to the dashboard page that draws it.
    report = by_key["demo-report"].data
    on_disk = (Path(tiny.output_dir) / "report" / "report.md").read_text()
    assert "## Policy comparison" in report and "| **rloo** |" in report
    assert "![" not in report and report.count("open the dashboard's") == on_disk.count("![") > 0
    for page in ("curves", "comparison"):
        assert f"open the dashboard's {page} page](http://localhost:8501/?page={page}&run={run_id})" in report, page
    assert f"8501/?page=comparison&run={run_id}" in by_key["demo-dashboard"].data
    assert "| gold_reward |" in by_key["demo-summary"].data and "| sft | no |" in by_key["demo-summary"].data
    assert [row["policy"] for row in json.loads(by_key["demo-policies"].data)] == ["sft", "ppo", "dpo", "rloo"]
    print(f"\nfirst flow run (tiny config): {first_run.seconds:.1f} s")


def test_rerun_is_answered_from_the_cache(first_run, tiny):
    again = run_flow(tiny)
    assert again.states() == {s: "Cached" for s in DEMO_STAGES}
    assert ([(r["stage"], r["status"], r["cache_hit"]) for r in again.stage_runs]
            == [(s, "completed", True) for s in DEMO_STAGES])
    assert {s: r.sha256 for s, r in again.results.items()} == {s: r.sha256 for s, r in first_run.results.items()}
    assert all(r.cache_hit for r in again.results.values())
    metrics = Store.for_output_dir(tiny.output_dir).query(  # a cached stage's metrics are recorded for this run too
        "select count(*) as n from metrics where stage_run_id = ? and name like 'eval/%'",
        [again.rows("eval")[0]["stage_run_id"]])
    assert metrics["n"][0] > 0
    print(f"\ncached rerun: {again.seconds:.1f} s (first run {first_run.seconds:.1f} s)")


def test_a_cache_hit_reports_the_files_on_disk(first_run, tiny):
    """The CLI recomputes PPO outside Prefect: its record on disk (timings) differs from Prefect's cached copy. The
    flow's cache hit is recorded from the verified files, and the same weights keep every downstream stage cached."""
    ppo_dir = first_run.results["ppo"].path(tiny.output_dir)
    shutil.rmtree(ppo_dir)
    shutil.rmtree(checkpoint_dir_for(ppo_dir))
    run_pipeline(tiny)  # the CLI's path
    on_disk = load_output(ppo_dir)
    assert on_disk.sha256 == first_run.results["ppo"].sha256  # same weights and curve: same digest (no timings in it)
    assert on_disk.seconds != first_run.results["ppo"].seconds
    after = run_flow(tiny)
    assert after.states()["ppo"] == "Cached" and after.results["ppo"].seconds == on_disk.seconds
    assert after.states()["eval"] == "Cached" and after.rows("eval")[0]["cache_hit"]


def test_deleted_sft_file_recomputes_sft_and_what_depends_on_it(first_run, tiny):
    before = run_flow(tiny).results
    sft_dir = before["sft"].path(tiny.output_dir)
    (sft_dir / "model.safetensors").unlink()
    after = run_flow(tiny)
    assert after.states()["data"] == "Cached"
    assert after.states()["sft"] == "Completed" and not after.rows("sft")[0]["cache_hit"]
    assert is_complete(sft_dir) and after.results["sft"].output_dir == before["sft"].output_dir
    # Deterministic on CPU: the same weights again, so every stage below SFT keeps its key and stays cached.
    assert after.results["sft"].sha256 == before["sft"].sha256
    for stage in ("reward", "ppo", "dpo", "rloo", "eval"):
        assert after.states()[stage] == "Cached" and after.rows(stage)[0]["cache_hit"], stage
        assert is_complete(after.results[stage].path(tiny.output_dir)), stage


def test_unstable_ppo_is_retried_from_its_last_checkpoint(first_run, tiny, monkeypatch):
    cfg = tiny.model_copy(update={"ppo": tiny.ppo.model_copy(update={"kl_coef": 0.1})})  # a new PPO key, same inputs
    monkeypatch.setenv(TEST_NAN_AT_STEP_ENV, "5")  # step 5 of a fresh run: checkpoint step 3 exists by then
    run = run_flow(cfg)
    assert [run.states()[s] for s in ("data", "sft", "reward")] == ["Cached"] * 3
    assert run.states()["ppo"] == "Completed" and run.task_runs["ppo"].run_count == 2
    attempts = run.rows("ppo")
    assert [(r["attempt"], r["status"]) for r in attempts] == [(1, "failed"), (2, "completed")]
    assert "PPOUnstable" in attempts[0]["cause"] and "nan_loss" in attempts[0]["cause"]
    assert pd.isna(attempts[1]["cause"]) and attempts[0]["task_run_id"] == attempts[1]["task_run_id"]
    assert run.results["ppo"].metrics["ppo/resumed_from_step"] == 3
    lr = Store.for_output_dir(cfg.output_dir).query(  # the retry's learning rate: scaled by lr_scale_on_retry ** 1
        "select value from metrics where stage_run_id = ? and name = 'ppo/lr' and step = 4",
        [attempts[1]["stage_run_id"]])
    steps = cfg.ppo.steps
    assert lr["value"][0] == pytest.approx(cfg.ppo.learning_rate * cfg.ppo.lr_scale_on_retry * (1 - 4 / steps),
                                           rel=1e-6)
    assert run.states()["eval"] == "Completed"


# ---- cheap checks (no flow run) -----------------------------------------------------------------------
def test_retry_condition_retries_only_what_a_retry_can_fix():
    assert retry_condition(None, None, Failed(data=PPOUnstable("nan_loss", 5, None)))
    assert retry_condition(None, None, Failed(data=StoreLocked("a reader held the store")))
    assert not retry_condition(None, None, Failed(data=FileNotFoundError("no sft model")))
    assert not retry_condition(None, None, Completed(data=1))


def test_policy_comparison_rows():
    rows = policy_comparison({"eval/sft/gold_reward": 0.1, "eval/ppo/gold_reward": 0.3, "eval/ppo/win_rate_gold": 0.6,
                              "eval/sft/kl": float("nan")})
    assert rows == [{"policy": "sft", "gold_reward": 0.1, "kl": None, "win_rate_gold": None},
                    {"policy": "ppo", "gold_reward": 0.3, "kl": None, "win_rate_gold": 0.6}]


def test_prefect_yaml_deployments_match_the_flow():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"rlhf-demo", "rlhf-nightly", "rlhf-sweep", "rlhf-calibration", "rlhf-compare",
                                "rlhf-sweep-ray"}
    assert [s["cron"] for s in deployments["rlhf-nightly"].get("schedules", [])] == ["0 3 * * *"]
    assert not deployments["rlhf-demo"].get("schedules")
    demo = load_config(REPO / "configs" / "demo.yaml")
    calibration = load_config(REPO / "configs" / "calibration.yaml")
    on_ray = demo.model_copy(update={
        "output_dir": Path("/shared/minirlhf"), "model": demo.model.model_copy(update={"device": "cuda"}),
        "runner": load_config(None, ["runner.kind=ray", "runner.ray_address=auto",
                                     "runner.resources={ppo: {num_gpus: 1}, eval: {num_gpus: 1}}"]).runner})
    configs = {"rlhf-calibration": calibration, "rlhf-sweep-ray": on_ray}
    flows = {"rlhf-demo": "rlhf-pipeline", "rlhf-nightly": "rlhf-pipeline", "rlhf-sweep": "overoptimization-sweep",
             "rlhf-calibration": "hacking-calibration", "rlhf-compare": "compare-methods",
             "rlhf-sweep-ray": "overoptimization-sweep"}
    for name, d in deployments.items():
        assert d["work_pool"]["name"] == ("minirlhf-gpu-pool" if name == "rlhf-sweep-ray" else "minirlhf-pool")
        flow = load_flow_from_entrypoint(str(REPO / d["entrypoint"]))
        assert flow.name == flows[name]
        params = flow.validate_parameters(d["parameters"])  # the server validates the same way
        assert params["config"] == configs.get(name, demo), name
    assert deployments["rlhf-sweep"]["parameters"]["kl_coefs"] == [0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
    assert deployments["rlhf-compare"]["parameters"]["seeds"] == [1, 2, 3]


def test_flow_parameter_is_a_form_with_the_config_limits():
    """The UI renders the flow's parameter schema as a form; the server validates against it."""
    schema = rlhf_pipeline.parameters.model_dump()
    ppo = schema["definitions"]["PPOConfig"]["properties"]
    assert ppo["kl_coef"]["default"] == 0.2 and ppo["kl_coef"]["minimum"] == 0
    assert schema["definitions"]["SFTConfig"]["properties"]["learning_rate"]["exclusiveMinimum"] == 0
    with pytest.raises(Exception, match="kl_coef"):
        rlhf_pipeline.validate_parameters({"config": {"ppo": {"kl_coef": -1}}})
