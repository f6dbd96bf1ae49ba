"""The reward-model ensemble stage, PPO's gold-free signals, the conservative reward and the rollback, on the tiny
model (slow tier); the conservative reward's formula against a naive reference (fast)."""

import json
import shutil
import statistics

import pytest
import torch
from safetensors.torch import load_file

from minirlhf.config import SIGNALS, load_config
from minirlhf.ensemble import bootstrap, mean_pairwise_corr
from minirlhf.scoring import HELDOUT, MEMBERS_FILE, conservative_reward
from minirlhf.pipeline import plan, run_pipeline, run_stage
from minirlhf.ppo.trainer import CURVE, checkpoint_dir_for, read_curve
from minirlhf.store import Store

from tests.test_ppo import TINY

ENSEMBLE = ["ensemble.enabled=true", "ensemble.members=3", "ensemble.num_train_epochs=1"]


def test_conservative_reward_matches_a_naive_reference():
    z = torch.tensor([[0.0, 1.0, -1.0], [2.0, 1.0, 0.0], [1.0, 1.0, 4.0]])  # (k=3, batch=3)
    for i in range(3):
        column = z[:, i].tolist()
        mean_minus = statistics.fmean(column) - 0.5 * statistics.pstdev(column)
        got = conservative_reward(z, "ensemble_mean_minus_std", 0.5, proxy_mean=1.0, proxy_std=2.0)[i]
        assert float(got) == pytest.approx(1.0 + 2.0 * mean_minus)
        assert float(conservative_reward(z, "ensemble_min", 0.5, 1.0, 2.0)[i]) == pytest.approx(1 + 2 * min(column))


def test_bootstrap_resamples_with_replacement_and_mean_pairwise_corr():
    rows = [{"i": i} for i in range(50)]
    resample = bootstrap(rows, seed=3)
    assert len(resample) == 50 and len({r["i"] for r in resample}) < 50 and resample == bootstrap(rows, seed=3)
    same = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])
    assert mean_pairwise_corr(same) == pytest.approx(1.0)
    mixed = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])  # pairs: +1, -1, -1
    assert mean_pairwise_corr(mixed) == pytest.approx(-1 / 3)


@pytest.fixture(scope="module")
def ensemble_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    cfg = load_config(None, TINY + ENSEMBLE + [f"output_dir={root}"])
    results = run_pipeline(cfg, ("ensemble",))
    return root, results


def state_of(checkpoint) -> dict:
    return torch.load(checkpoint / "trainer_state.pt", weights_only=True)


def _ppo(root, tmp_path, extra=()):
    out = tmp_path / "run"
    shutil.copytree(root, out, ignore=shutil.ignore_patterns("rlhf.duckdb*"))
    cfg = load_config(None, TINY + ENSEMBLE + list(extra) + [f"output_dir={out}"])
    ups = {}
    for stage in ("data", "sft", "reward", "ensemble"):
        ups[stage] = plan(cfg, stage, ups).find_output()
    store = Store.for_output_dir(out)
    result = run_stage(plan(cfg, "ppo", ups), store, store.start_run(cfg.model_dump(mode="json")))
    return cfg, store, result


@pytest.mark.slow
def test_the_ensemble_stage_trains_members_and_a_heldout_model(ensemble_root):
    root, results = ensemble_root
    out = results["ensemble"].path(root)
    members = json.loads((out / MEMBERS_FILE).read_text())
    assert [m["name"] for m in members] == ["member-1", "member-2", HELDOUT]
    assert len({m["seed"] for m in members}) == 3
    for m in members:
        assert (out / m["name"] / "model.safetensors").is_file() and m["score_std"] > 0
    metrics = results["ensemble"].metrics
    assert metrics["ensemble/members"] == 3  # the proxy and two more
    assert -1 <= metrics["ensemble/member_corr"] < 1  # different seeds and resamples: not one model three times
    assert metrics["ensemble/member_spread"] > 0


@pytest.mark.slow
def test_ppo_logs_every_signal_every_step_neutral_at_the_baseline(ensemble_root, tmp_path):
    cfg, store, result = _ppo(ensemble_root[0], tmp_path)
    curve = read_curve(result.path(cfg.output_dir) / CURVE)
    assert [row["step"] for row in curve] == list(range(1, cfg.ppo.steps + 1))
    for row in curve:
        assert {f"ppo/signal/{s}" for s in SIGNALS} <= row.keys(), row.keys()
    first = curve[0]  # step 1: the baseline measured against itself
    assert first["ppo/signal/ensemble_disagreement"] == pytest.approx(1.0)
    assert first["ppo/signal/heldout_gap"] == pytest.approx(0.0, abs=1e-9)
    assert first["ppo/signal/phrase_rise"] == 0.0 and first["ppo/signal/length_drift"] == 0.0
    logged = store.query("select count(distinct step) n from metrics where name = 'ppo/signal/heldout_gap'")
    assert logged["n"][0] == cfg.ppo.steps


@pytest.mark.slow
def test_the_conservative_reward_is_what_ppo_maximises(ensemble_root, tmp_path):
    cfg, _, result = _ppo(ensemble_root[0], tmp_path, ["ppo.reward=ensemble_min"])
    curve = read_curve(result.path(cfg.output_dir) / CURVE)
    # the worst member in the proxy's units is never above the proxy itself (the proxy is a member)
    assert all(row["ppo/reward"] <= row["ppo/proxy_reward"] + 1e-6 for row in curve)
    assert any(row["ppo/reward"] < row["ppo/proxy_reward"] - 1e-3 for row in curve)


@pytest.mark.slow
def test_a_warning_stops_ppo_and_rolls_back_to_the_checkpoint_before_the_rise(ensemble_root, tmp_path):
    # length_drift >= -1 always holds: the warning fires at the first step patience allows after warmup
    cfg, store, result = _ppo(ensemble_root[0], tmp_path, [
        'hacking.thresholds={"length_drift": -1.0}', "hacking.min_signals=1", "hacking.patience=2",
        "hacking.warmup=3", "hacking.rollback=true", "ppo.checkpoint_every=1", "ppo.keep_checkpoints=6"])
    assert result.metrics["ppo/warning_step"] == 4  # over at steps 3 and 4
    assert result.metrics["ppo/rollback_step"] == 2  # the newest checkpoint before step 3, when the rise began
    events = store.query("select kind, step, message, evidence, examples from failure_events")
    assert events["kind"].tolist() == ["reward_hacking_onset"] and events["step"].tolist() == [4]
    assert "rolled back to step 2" in events["message"][0]
    assert json.loads(events["evidence"][0])["rollback_step"] == 2 and json.loads(events["examples"][0])
    out = result.path(cfg.output_dir)
    saved = load_file(checkpoint_dir_for(out) / "step-000002" / "policy" / "model.safetensors")
    output = load_file(out / "model.safetensors")
    assert all(torch.equal(output[k], saved[k]) for k in output)
    assert [row["step"] for row in read_curve(out / CURVE)] == [1, 2, 3, 4]  # what the warning saw is kept
    from minirlhf.console import failure_events  # the run's summary lists it, one line

    assert failure_events(cfg, {"ppo": result}) == [
        {"policy": "ppo", "kind": "reward_hacking_onset",
         "message": "gold-free reward-hacking warning at step 4: rolled back to step 2, stopped there (the output "
                    "is that step's policy)"}]


@pytest.mark.slow
def test_after_a_rollback_ppo_trains_on_with_a_larger_kl_coef(ensemble_root, tmp_path):
    """hacking.rollback_kl_scale: back to step 2's checkpoint, then steps 3-6 again at 10 x kl_coef; the abandoned
    steps 3-4 stay in the failure event only, and the checkpoints say so to a resumed run."""
    cfg, store, result = _ppo(ensemble_root[0], tmp_path, [
        'hacking.thresholds={"length_drift": -1.0}', "hacking.min_signals=1", "hacking.patience=2",
        "hacking.warmup=3", "hacking.rollback=true", "hacking.rollback_kl_scale=10", "ppo.checkpoint_every=1",
        "ppo.keep_checkpoints=6"])
    base = cfg.ppo.kl_coef
    assert result.step == cfg.ppo.steps == 6
    assert (result.metrics["ppo/warning_step"], result.metrics["ppo/rollback_step"]) == (4, 2)
    assert result.metrics["ppo/kl_coef_after_rollback"] == pytest.approx(10 * base)
    out = result.path(cfg.output_dir)
    curve = read_curve(out / CURVE)
    assert [row["step"] for row in curve] == [1, 2, 3, 4, 5, 6]  # the branch kept: no step twice
    assert [row["ppo/kl_coef"] for row in curve] == pytest.approx([base, base] + [10 * base] * 4)
    events = store.query("select step, message, evidence from failure_events")
    assert events["step"].tolist() == [4]  # the warning acted once; afterwards it is logged only
    assert "training on to step 6 at kl_coef x 10" in events["message"][0]
    assert [row["step"] for row in json.loads(events["evidence"][0])["abandoned"]] == [3, 4]
    logged = store.query("select step, value from metrics where name = 'ppo/kl_coef' order by step")
    assert logged["value"].tolist() == pytest.approx([base, base] + [10 * base] * 4)  # the store holds the kept branch
    for step in (2, 6):  # step 2 rewritten as the run trained on from it: a retry resumes in that phase
        state = torch.load(checkpoint_dir_for(out) / f"step-{step:06d}" / "trainer_state.pt", weights_only=True)
        assert state["rolled_back"] == {"warning_step": 4, "rollback_step": 2}  # a resumed run knows it rolled back
        assert state["kl_ctl"]["value"] == pytest.approx(10 * base)
    assert state_of(checkpoint_dir_for(out) / "step-000002")["optimizer"]["state"] == {}  # fresh moments from there
