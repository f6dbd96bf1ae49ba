"""The dashboard (dashboards/app.py), its saved SQL (dashboards/queries/) and the store's v_* views.

Fast: the views on old and read-only files, `minirlhf query` refusing writes (argument and --file), the busy-store
message. Slow: every page in Streamlit's AppTest on a store filled by a real tiny pipeline: two runs with different
kl_coef, the first with a PPO attempt that fails (injected NaN) and a retry that resumes from its checkpoint.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from minirlhf.cli import app as cli_app
from minirlhf.store import VIEWS, Store
from tests.test_ppo import TINY

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboards" / "app.py"
QUERIES = sorted((REPO / "dashboards" / "queries").glob("*.sql"))
PAGES = ("runs", "curves", "reward", "interpret", "comparison", "samples", "failures", "sweep", "hacking", "cai")
NAN_AT_STEP = 5  # TINY checkpoints every 3 steps: the retry resumes from step 3
_BUILT: dict[str, Path] = {}


# ---- a store filled by a real tiny pipeline (shared with tests/test_browser.py) -------------------------------
def build_dashboard_store(root: Path) -> Path:
    from minirlhf.config import load_config
    from minirlhf.pipeline import plan, run_pipeline, run_stage
    from minirlhf.ppo.trainer import TEST_NAN_AT_STEP_ENV, PPOUnstable

    # SFT and PPO only: the stages are run one by one here, and the pages are tested on those two policies.
    cfg = load_config(None, TINY + [f"output_dir={root}", "eval.n_prompts=8", "dpo.enabled=false",
                                    "rloo.enabled=false", "interpret.enabled=true"])
    store = Store.for_output_dir(root)
    run_id = store.start_run(cfg.model_dump(mode="json"))
    results = {}
    for stage in ("data", "sft", "reward", "interpret"):
        results[stage] = run_stage(plan(cfg, stage, results), store, run_id)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(PPOUnstable):
        patch.setenv(TEST_NAN_AT_STEP_ENV, str(NAN_AT_STEP))
        run_stage(plan(cfg, "ppo", results), store, run_id, attempt=1)
    results["ppo"] = run_stage(plan(cfg, "ppo", results), store, run_id, attempt=2)
    results["eval"] = run_stage(plan(cfg, "eval", results), store, run_id)
    store.finish_run(run_id, "completed")
    assert results["ppo"].metrics["ppo/resumed_from_step"] == 3

    # A failure event as the detectors record one (their code lives elsewhere): the real write API, real samples.
    eval_run = store.query("select stage_run_id from stage_runs where run_id = ? and stage = 'eval'", [run_id])
    examples = store.query("select prompt, response, proxy_reward, gold_reward from samples where policy = 'ppo' "
                           "and stage_run_id = ? limit 2", [eval_run.iloc[0, 0]]).to_dict("records")
    store.log_failure_event(eval_run.iloc[0, 0], "proxy_gold_divergence", "proxy reward rose while gold fell",
                            severity="warning", evidence={"proxy_delta": 0.2, "gold_delta": -0.1}, examples=examples)

    other = load_config(None, TINY + [f"output_dir={root}", "eval.n_prompts=8", "ppo.kl_coef=0.5", "dpo.enabled=false",
                                      "rloo.enabled=false"])
    run_pipeline(other, store=store)  # reuses data, sft and reward; trains and evaluates a second PPO policy
    return store.path


def dashboard_store(tmp_path_factory) -> Path:
    if "path" not in _BUILT:
        _BUILT["path"] = build_dashboard_store(tmp_path_factory.mktemp("dashboard"))
    return _BUILT["path"]


@pytest.fixture(scope="session")
def filled_store(tmp_path_factory) -> Path:
    return dashboard_store(tmp_path_factory)


def open_page(db: Path, page: str, monkeypatch, **params) -> AppTest:
    monkeypatch.setenv("MINIRLHF_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params["page"] = page
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value
    return at


def charts(at: AppTest) -> list[tuple[dict, dict[str, pd.DataFrame]]]:
    """Each Vega-Lite chart on the page: its spec, and its datasets by name (Streamlit sends them as Arrow)."""
    return [(json.loads(c.proto.spec),
             {d.name: pa.ipc.open_stream(d.data.data).read_pandas() for d in c.proto.datasets})
            for c in at.get("vega_lite_chart")]


# ---- fast: views, read-only queries, a busy store --------------------------------------------------------------
@pytest.fixture
def small_store(tmp_path) -> Store:
    store = Store(tmp_path / "rlhf.duckdb")
    run_id = store.start_run({"ppo": {"kl_coef": 0.05}})
    stage = store.start_stage(run_id, "eval")
    store.log_metrics(stage, {"eval/sft/gold_reward": 0.1, "eval/dpo/gold_reward": 0.3, "eval/dpo/kl": 1.5})
    store.finish_stage(stage, "completed")
    store.finish_run(run_id, "completed")
    return store


def persistent_views(path: Path) -> set[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {r[0] for r in con.execute("select view_name from duckdb_views() where not internal and not temporary")
                .fetchall()}


def test_views_are_written_and_policies_are_rows_not_columns(small_store):
    assert persistent_views(small_store.path) == set(VIEWS)
    table = small_store.query("select policy, gold_reward, kl from v_policy_comparison order by policy")
    assert table["policy"].tolist() == ["dpo", "sft"]  # a policy the store has never seen before is just a row
    assert table["gold_reward"].tolist() == [0.3, 0.1]
    assert table["kl"].iloc[0] == 1.5 and pd.isna(table["kl"].iloc[1])


def test_a_file_without_views_answers_them_read_only_and_gets_them_at_its_next_write(small_store):
    with duckdb.connect(str(small_store.path)) as con:  # a file written before the views existed
        for name in reversed(list(VIEWS)):
            con.execute(f"DROP VIEW {name}")
    assert persistent_views(small_store.path) == set()
    assert small_store.query("select status from v_runs")["status"].tolist() == ["completed"]
    assert persistent_views(small_store.path) == set()  # the read did not write
    Store(small_store.path).start_run({})
    assert persistent_views(small_store.path) == set(VIEWS)


def test_a_cached_stage_shows_the_curves_and_samples_of_the_run_that_computed_it(tmp_path):
    store = Store(tmp_path / "rlhf.duckdb")

    def ppo_run(cache_hit: bool, steps: list[int]) -> str:
        run_id = store.start_run({})
        stage = store.start_stage(run_id, "ppo", cache_hit=cache_hit, output_dir=tmp_path / "ppo" / "key1")
        for step in steps:
            store.log_metrics(stage, {"ppo/proxy_reward": step / 10, "ppo/kl": 0.01 * step}, step=step)
            store.log_samples(stage, [{"prompt": "p", "response": f"r{step}"}], step=step, policy="ppo")
        store.log_metrics(stage, {"ppo/proxy_reward": 0.2, "ppo/resumed_from_step": 0}, step=2)  # the summary
        store.finish_stage(stage, "completed")
        return run_id

    computed, reused = ppo_run(False, [1, 2]), ppo_run(True, [])
    recomputed = ppo_run(False, [1, 2, 3])  # after `make clean`: the same output directory, computed again
    curves = store.query("select run_id, reused, step from v_ppo_curves order by run_id, step")
    assert curves[curves["run_id"] == reused][["reused", "step"]].values.tolist() == [[True, 1], [True, 2]]
    assert curves[curves["run_id"] == computed]["step"].tolist() == [1, 2]
    assert curves[curves["run_id"] == recomputed]["step"].tolist() == [1, 2, 3]
    samples = store.query("select response from v_samples where run_id = ? order by step", [reused])
    assert samples["response"].tolist() == ["r1", "r2"]


@pytest.mark.parametrize("query", QUERIES, ids=lambda p: p.stem)
def test_every_saved_query_runs_with_minirlhf_query_file(small_store, query):
    out = CliRunner().invoke(cli_app, ["query", "--db", str(small_store.path), "--file", str(query),
                                       "--format", "json"])
    assert out.exit_code == 0, out.output
    assert isinstance(json.loads(out.output), list)


@pytest.mark.parametrize("sql", ["drop table metrics", "create view v_mine as select 1",
                                 "delete from metrics", "insert into runs (run_id) values ('x')",
                                 "select 1; update metrics set value = 0"])
@pytest.mark.parametrize("how", ["argument", "file"])
def test_minirlhf_query_refuses_writes_and_ddl_and_changes_nothing(small_store, tmp_path, sql, how):
    before = small_store.query("select * from metrics")
    tables = small_store.query("select table_name from duckdb_tables()")
    if how == "file":
        (tmp_path / "bad.sql").write_text(sql)
        args = ["--file", str(tmp_path / "bad.sql")]
    else:
        args = [sql]
    out = CliRunner().invoke(cli_app, ["query", "--db", str(small_store.path), *args])
    assert out.exit_code == 1
    assert "query is read-only" in out.output and "Traceback" not in out.output
    pd.testing.assert_frame_equal(small_store.query("select * from metrics"), before)
    pd.testing.assert_frame_equal(small_store.query("select table_name from duckdb_tables()"), tables)
    assert persistent_views(small_store.path) == set(VIEWS)


def test_a_store_held_by_a_writer_gives_a_busy_message_not_a_traceback(small_store, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(60)", str(small_store.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("MINIRLHF_DASHBOARD_LOCK_TIMEOUT_S", "0.5")
        at = open_page(small_store.path, "comparison", monkeypatch)
        assert "is busy" in at.warning[0].value and "write lock" in at.warning[0].value
        assert at.button[0].label == "Retry"
    finally:
        holder.kill()
        holder.wait()
    at.run()  # the writer is gone: the same session now shows the page
    assert not at.warning and not at.exception
    assert set(at.table[0].value.index) == {"dpo", "sft"}


def test_a_missing_store_says_how_to_make_one(tmp_path, monkeypatch):
    at = open_page(tmp_path / "none.duckdb", "runs", monkeypatch)
    assert "run the pipeline first" in at.info[0].value
    assert not (tmp_path / "none.duckdb").exists()


def test_config_differences_lists_only_changed_fields():
    spec = importlib.util.spec_from_file_location("dashboard_app", APP)  # dashboards/ is not a package
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the helpers; the page itself runs only as __main__
    config_differences = module.config_differences
    diff = config_differences({"ppo": {"kl_coef": 0.05, "gamma": 1.0}, "seed": 0},
                              {"ppo": {"kl_coef": 0.2, "gamma": 1.0}, "seed": 0, "dpo": {"beta": 0.1}})
    assert diff.to_dict("records") == [{"field": "dpo.beta", "run A": "null", "run B": "0.1"},
                                       {"field": "ppo.kl_coef", "run A": "0.05", "run B": "0.2"}]


# ---- slow: every page on a real tiny pipeline's store ----------------------------------------------------------
@pytest.mark.slow
def test_runs_page_shows_both_runs_their_stages_and_config_differences(filled_store, monkeypatch):
    at = open_page(filled_store, "runs", monkeypatch)
    runs = at.dataframe[0].value
    assert len(runs) == 2 and set(runs["status"]) == {"completed"}
    assert (runs["duration_s"] > 0).all()
    assert sorted(runs["failed_attempts"]) == [0, 1]
    first = runs.sort_values("started_at")["run_id"].iloc[0]
    at = open_page(filled_store, "runs", monkeypatch, run=first)
    stages = at.dataframe[1].value
    ppo = stages[stages["stage"] == "ppo"].sort_values("attempt")
    assert ppo["status"].tolist() == ["failed", "completed"]
    assert "PPOUnstable" in ppo["cause"].iloc[0]
    diff = at.table[0].value
    assert "ppo.kl_coef" in set(diff["field"]) and len(diff) >= 1


@pytest.mark.slow
def test_curves_page_draws_proxy_gold_and_kl_with_the_resume_point(filled_store, monkeypatch):
    first = Store(filled_store).query("select run_id from runs order by started_at limit 1").iloc[0, 0]
    at = open_page(filled_store, "curves", monkeypatch, run=first)
    attempts = at.dataframe[0].value
    assert attempts["attempt"].tolist() == [1, 2]
    assert attempts["status"].tolist() == ["failed", "completed"]
    assert attempts["resumed_from_step"].tolist()[1] == 3
    drawn = charts(at)
    assert [spec["layer"][0]["encoding"]["y"]["field"] for spec, _ in drawn] == ["proxy_reward", "gold_reward", "kl"]
    for spec, data in drawn:
        steps, rules = (data[layer["data"]["name"]] for layer in spec["layer"])
        assert rules["resumed_from_step"].tolist() == [3] and rules["attempt"].tolist() == [2]
        assert set(steps["attempt"]) == {1, 2} and steps["step"].max() == 6
        assert steps[steps["attempt"] == 2]["step"].min() == 4  # the retry went on after its checkpoint


@pytest.mark.slow
def test_reward_page_shows_accuracy_per_intent_and_score_against_length(filled_store, monkeypatch):
    at = open_page(filled_store, "reward", monkeypatch)
    (_, by_intent), (_, score_vs_length) = charts(at)
    intents = list(by_intent.values())[0]
    assert {"benign", "harmful"} <= set(intents["intent"])
    assert intents["accuracy"].between(0, 1).all()
    points = list(score_vs_length.values())[0]
    assert set(points["policy"]) == {"sft", "ppo"} and len(points) == 16
    assert "reward/accuracy" in set(at.dataframe[0].value["name"])


@pytest.mark.slow
def test_interpret_page_draws_the_probes_per_layer_and_the_stage_figures(filled_store, monkeypatch):
    at = open_page(filled_store, "interpret", monkeypatch)
    (_, data), = charts(at)
    probes = list(data.values())[0]
    assert set(probes["feature"]) == {"correct", "hedge", "filler", "refusal", "length"}
    stored = Store(filled_store).query("select name, value from v_metrics where stage = 'interpret'")
    assert len(probes) == stored["name"].str.contains(r"/layer\d+$").sum()  # every (feature, layer) probe, once
    assert set(at.dataframe[0].value["feature"]) == set(probes["feature"])
    shown = [caption for image in at.get("image") for caption in image.captions]
    assert sorted(shown) == ["attribution 1", "attribution 2", "attribution 3", "probes"]


@pytest.mark.slow
def test_comparison_page_shows_every_evaluated_policy(filled_store, monkeypatch):
    at = open_page(filled_store, "comparison", monkeypatch)
    table = at.table[0].value
    assert list(table.index) == ["sft", "ppo"]
    assert table.loc["sft", "kl"] == 0 and 0 <= table.loc["ppo", "win_rate_gold"] <= 1
    assert charts(at)
    assert "minirlhf compare" in at.info[0].value  # no comparison over seeds yet: how to make one


@pytest.mark.slow
def test_samples_page_puts_the_same_prompt_side_by_side(filled_store, monkeypatch):
    at = open_page(filled_store, "samples", monkeypatch)
    shown = [c for c in at.columns if c.markdown]
    assert sorted(c.markdown[0].value for c in shown) == ["**ppo**", "**sft**"]
    newest = Store(filled_store).query("select run_id from runs order by started_at desc limit 1").iloc[0, 0]
    prompt_id = at.selectbox(key="prompt").value
    stored = Store(filled_store).query("select policy, response from v_samples where stage = 'eval' and run_id = ? "
                                       "and prompt_id = ?", [newest, prompt_id])
    for column in shown:
        policy = column.markdown[0].value.strip("*")
        expected = stored[stored["policy"] == policy]["response"].iloc[0].strip() or "(empty response)"
        assert column.text[0].value == expected


@pytest.mark.slow
def test_failures_page_shows_the_event_with_evidence_and_examples(filled_store, monkeypatch):
    first = Store(filled_store).query("select run_id from runs order by started_at limit 1").iloc[0, 0]
    at = open_page(filled_store, "failures", monkeypatch, run=first)
    assert at.dataframe[0].value["kind"].tolist() == ["proxy_gold_divergence"]
    assert json.loads(at.json[0].value) == {"proxy_delta": 0.2, "gold_delta": -0.1}
    assert len(at.dataframe[1].value) == 2 and "response" in at.dataframe[1].value


@pytest.mark.slow
def test_sweep_page_draws_gold_and_proxy_against_d_with_the_fit(filled_store, tmp_path, monkeypatch):
    """A sweep stage recorded (minirlhf.pipeline.plan_sweep + run_stage, real writes) over the two evaluated PPO
    policies of the filled store (kl_coef 0.2 and 0.5): its points, the fitted curves and the fits table."""
    from minirlhf.config import load_config
    from minirlhf.pipeline import plan_sweep, run_stage
    from minirlhf.stage import load_output

    evals = Store(filled_store).query("select s.output_dir, r.config from stage_runs s join runs r using (run_id) "
                                      "where s.stage = 'eval' and not s.cache_hit order by s.started_at")
    by_coef = {json.loads(c)["ppo"]["kl_coef"]: load_output(Path(d)) for d, c in zip(evals.output_dir, evals.config)}
    assert sorted(by_coef) == [0.2, 0.5]
    cfg = load_config(None, [f"output_dir={filled_store.parent}"])  # the eval outputs live under the filled root
    store = Store(tmp_path / "rlhf.duckdb")
    with store.run({"sweep": True}) as run_id:
        run_stage(plan_sweep(cfg, by_coef), store, run_id)

    at = open_page(store.path, "sweep", monkeypatch)
    (spec, data), = charts(at)
    dots, curves = (data[layer["data"]["name"]] for layer in spec["layer"])
    assert set(dots["reward"]) == {"gold", "proxy"} and sorted(set(dots["kl_coef"])) == [0.2, 0.5]
    assert set(curves["reward"]) == {"gold", "proxy"} and len(curves) == 200
    fits = at.table[0].value
    assert list(fits.index) == ["gold", "proxy"] and fits["alpha"].notna().all()
    assert len(at.dataframe[0].value) == 2


def test_sweep_page_on_a_store_without_a_sweep_says_how_to_make_one(small_store, monkeypatch):
    at = open_page(small_store.path, "sweep", monkeypatch)
    assert "minirlhf sweep" in at.info[0].value


@pytest.mark.slow
def test_hacking_page_shows_the_calibration_and_the_defence(filled_store, tmp_path, monkeypatch):
    """A calibration stage recorded (plan_calibration + run_stage, real writes) over the filled store's two PPO runs
    and their evaluations, labelled as two seeds, watched and defended."""
    from minirlhf.config import load_config
    from minirlhf.pipeline import plan_calibration, run_stage
    from minirlhf.stage import load_output

    rows = Store(filled_store).query(
        "select s.stage, s.output_dir, r.config from stage_runs s join runs r using (run_id) "
        "where s.stage in ('ppo', 'eval') and s.status = 'completed' and not s.cache_hit order by s.started_at")
    outputs = {}
    for stage, out, config in zip(rows.stage, rows.output_dir, rows.config):
        outputs.setdefault(json.loads(config)["ppo"]["kl_coef"], {})[stage] = load_output(Path(out))
    points = [{"name": f"kl{kl}-seed{seed}{'-defended' if defended else ''}", "kl_coef": kl, "seed": seed,
               "defended": defended, **outputs[kl]}
              for defended in (False, True) for seed, kl in ((1, 0.2), (2, 0.5))]
    cfg = load_config(None, [f"output_dir={filled_store.parent}"])
    store = Store(tmp_path / "rlhf.duckdb")
    with store.run({"calibration": True}) as run_id:
        result = run_stage(plan_calibration(cfg, points, []), store, run_id)
    assert (result.path(cfg.output_dir) / "calibration.png").is_file()

    at = open_page(store.path, "hacking", monkeypatch)
    detectors = at.dataframe[0].value
    assert "combined" in set(detectors["detector"]) and "phrase_rise" in set(detectors["detector"])
    assert (detectors["n_hacked"] + detectors["n_healthy"] == 2).all()  # both runs scored once, out of sample
    defence = at.dataframe[1].value
    assert sorted(zip(defence["defended"], defence["kl_coef"])) == [(False, 0.2), (False, 0.5), (True, 0.2),
                                                                    (True, 0.5)]
    (spec, data), = charts(at)
    assert len(spec["layer"]) == 3


def test_hacking_page_on_a_store_without_a_calibration_says_how_to_make_one(small_store, monkeypatch):
    at = open_page(small_store.path, "hacking", monkeypatch)
    assert "minirlhf calibrate" in at.info[0].value
