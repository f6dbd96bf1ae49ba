"""The gold-free reward-hacking signals, the early warning and the gold onset (minirlhf.hacking), against naive
references and hand-made cases."""

import json
import math
import random
import statistics

import pytest

from minirlhf.hacking import (BatchView, EarlyWarning, ensemble_disagreement, first_fire, gold_onset, heldout_gap,
                              kl_acceleration, member_spread, ood_share, phrase_rise, phrase_shares, replay_warning,
                              step_signals)

FILLER = "i hope this helps"


def test_member_spread_is_the_mean_population_std_across_members():
    rng = random.Random(0)
    members = [[rng.gauss(0, 1) for _ in range(7)] for _ in range(4)]
    naive = statistics.mean(statistics.pstdev([m[i] for m in members]) for i in range(7))
    assert member_spread(members) == pytest.approx(naive)


def test_ensemble_disagreement_is_1_on_the_baseline_and_grows_when_members_split():
    base = [[0.0, 1.0, 2.0], [0.1, 1.1, 1.9]]
    assert ensemble_disagreement(base, base) == pytest.approx(1.0)
    split = [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]  # member 0 rewards these samples, member 1 does not
    assert ensemble_disagreement(split, base) > 10


def test_heldout_gap_is_the_proxy_gain_the_heldout_model_does_not_share():
    base_proxy, base_heldout = [0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 4.0, 6.0]
    # both gain one baseline spread: no gap
    sd_p, sd_h = statistics.pstdev(base_proxy), statistics.pstdev(base_heldout)
    both = heldout_gap([v + sd_p for v in base_proxy], [v + sd_h for v in base_heldout], base_proxy, base_heldout)
    assert both == pytest.approx(0.0, abs=1e-9)
    only_proxy = heldout_gap([v + 2 * sd_p for v in base_proxy], base_heldout, base_proxy, base_heldout)
    assert only_proxy == pytest.approx(2.0)


def test_ood_share_counts_scores_strictly_above_the_threshold():
    assert ood_share([0.5, 1.0, 1.5, 2.0], 1.0) == 0.5
    assert ood_share([], 1.0) == 0.0


def test_phrase_shares_count_each_prompt_once():
    shares = phrase_shares(["a b c", "a b c d", "x y z"], ["p1", "p1", "p2"], n=3)
    assert shares[("a", "b", "c")] == 0.5  # two responses, one prompt: 1 of 2 prompts
    assert shares[("b", "c", "d")] == 0.5 and shares[("x", "y", "z")] == 0.5


def test_phrase_rise_finds_a_phrase_appended_to_unrelated_answers():
    prompts = [f"question {i}" for i in range(10)]
    answers = [f"answer number {i} is here" for i in range(10)]
    base = BatchView(answers, prompts, [0.0] * 10)
    hacked = BatchView([f"{a} {FILLER}" if i < 8 else a for i, a in enumerate(answers)], prompts, [0.0] * 10)
    rise, phrase = phrase_rise(hacked, base, n=3)
    assert rise == pytest.approx(0.8)
    assert phrase in {"is here i", "here i hope", "i hope this", "hope this helps"}  # each rose by 0.8
    assert phrase_rise(base, base, n=3)[0] == 0.0


def test_kl_acceleration_is_the_second_difference_of_the_smoothed_curve():
    assert kl_acceleration([1.0, 2.0]) == 0.0
    linear = [float(i) for i in range(10)]
    assert kl_acceleration(linear, window=1) == pytest.approx(0.0)
    quadratic = [float(i * i) for i in range(10)]
    assert kl_acceleration(quadratic, window=1) == pytest.approx(2.0)


def test_step_signals_on_the_baseline_are_neutral():
    view = BatchView(["a b c d", "e f g h"], ["p", "q"], [0.1, 0.2], members=[[0.1, 0.2], [0.3, 0.1]],
                     heldout=[0.0, 1.0], entropy=2.0)
    signals = step_signals(view, view, ood_threshold=5.0, kls=[0.0])
    assert signals == {"ensemble_disagreement": pytest.approx(1.0), "heldout_gap": pytest.approx(0.0),
                       "ood_share": 0.0, "phrase_rise": 0.0, "kl_acceleration": 0.0, "kl_level": 0.0,
                       "entropy_drop": 0.0,
                       "length_drift": 0.0, "repetition": 0.0}


def test_step_signals_without_ensemble_or_ood_threshold_leave_those_out():
    view = BatchView(["a b c"], ["p"], [0.1])
    assert set(step_signals(view, view, None, [0.0])) == {"phrase_rise", "kl_acceleration", "kl_level",
                                                          "length_drift", "repetition"}
    assert step_signals(view, view, None, [0.5, 2.5])["kl_level"] == 2.5  # the newest step's KL


def test_first_fire_needs_patience_and_respects_warmup():
    values = [5, 0, 5, 5, 0, 5, 5, 5]
    assert first_fire(values, 1, patience=2) == 3
    assert first_fire(values, 1, patience=3) == 7
    assert first_fire(values, 1, patience=1, warmup=1) == 2
    assert first_fire(values, 9, patience=1) is None


def test_early_warning_needs_min_signals_lasting_together():
    warning = EarlyWarning({"a": 1.0, "b": 1.0}, min_signals=2, patience=2, warmup=0)
    steps = [{"a": 2, "b": 0}, {"a": 2, "b": 2}, {"a": 2, "b": 2}, {"a": 2, "b": 2}]
    fired = [warning.update(i + 1, s) for i, s in enumerate(steps)]
    assert fired == [False, False, True, False]  # b lasts 2 steps at step 3; fires once
    assert warning.fired_at == 3 and warning.fired_signals == {"a": 2, "b": 2}


def test_replay_warning_over_a_logged_curve_matches_the_live_warning():
    rng = random.Random(1)
    curve = [{"step": s, "ppo/signal/a": rng.random() * s / 5, "ppo/signal/b": rng.random() * s / 5, "ppo/kl": 1.0}
             for s in range(1, 31)]
    live = EarlyWarning({"a": 1.0, "b": 1.0}, 2, 2, 3)
    for row in curve:
        live.update(row["step"], {k[11:]: v for k, v in row.items() if k.startswith("ppo/signal/")})
    assert replay_warning(curve, {"a": 1.0, "b": 1.0}, 2, 2, 3) == live.fired_at is not None and live.fired_at


def naive_onset(gold, proxy, drop, window):
    def sm(v):
        return [statistics.mean(v[max(0, i - window + 1): i + 1]) for i in range(len(v))]
    g, p = sm(gold), sm(proxy)
    for i in range(len(g)):
        if all(g[j] <= max(g[: j + 1]) - drop for j in range(i, len(g))) and p[-1] > p[i]:
            return i + 1
    return None


@pytest.mark.parametrize("seed", range(20))
def test_gold_onset_matches_a_naive_reference(seed):
    rng = random.Random(seed)
    n = 30
    peak = rng.randint(5, 25)
    gold = [min(s, peak) * 0.05 - max(0, s - peak) * rng.uniform(0, 0.08) + rng.gauss(0, 0.03) for s in range(n)]
    proxy = [s * 0.1 + rng.gauss(0, 0.05) for s in range(n)]
    assert gold_onset(list(range(1, n + 1)), gold, proxy, 0.1, 5) == naive_onset(gold, proxy, 0.1, 5)


def test_gold_onset_of_hacking_healthy_and_recovering_runs():
    steps = list(range(1, 21))
    rising = [0.05 * s for s in steps]
    assert gold_onset(steps, rising, rising, 0.1, 1) is None  # healthy
    hacked = [min(s, 10) * 0.1 - max(0, s - 10) * 0.1 for s in steps]  # peaks at step 10, falls 0.1 per step
    assert gold_onset(steps, hacked, rising, 0.1, 1) == 11
    recovers = hacked[:15] + [1.0] * 5  # back at its peak by the end: no onset
    assert gold_onset(steps, recovers, rising, 0.1, 1) is None
    flat_proxy = [1.0] * 20  # gold falls but proxy does not rise after: not reward hacking
    assert gold_onset(steps, hacked, flat_proxy, 0.1, 1) is None
    assert not math.isnan(gold_onset(steps, hacked, rising, 0.1, 3))


# ---- calibration against gold (minirlhf.calibration) --------------------------------------------------------------
def synthetic_run(name, seed, hacked, signal_rise_at=None, n=20):
    """A PPO curve: gold peaks at step 10 and falls when hacked; 'a' rises from `signal_rise_at`, 'b' is noise."""
    from minirlhf.calibration import CalibrationRun

    rng = random.Random(name)  # str seeds are hashed with sha512: the same noise in every process
    steps = list(range(1, n + 1))
    gold = [min(s, 10) * 0.05 - (max(0, s - 10) * 0.06 if hacked else 0) for s in steps]
    proxy = [0.1 * s for s in steps]
    a = [(1.0 if signal_rise_at is not None and s >= signal_rise_at else 0.0) + rng.uniform(0, 0.2) for s in steps]
    b = [rng.uniform(0, 1) for _ in steps]
    run = CalibrationRun(name, 0.1, seed, steps, gold, proxy, {"a": a, "b": b})
    run.onset = gold_onset(steps, gold, proxy, 0.1, 1)
    return run


def test_calibration_picks_the_signal_that_separates_and_scores_it_on_other_seeds():
    from minirlhf.calibration import COMBINED, calibrate

    runs = []
    for seed in (1, 2):
        runs += [synthetic_run(f"h{seed}{i}", seed, True, signal_rise_at=9) for i in range(3)]
        runs += [synthetic_run(f"ok{seed}{i}", seed, False) for i in range(3)]
    assert all(r.onset == 12 for r in runs if r.name.startswith("h"))  # 0.12 below the 0.5 peak at step 12
    result = calibrate(runs, train_seeds=(1,), detectors=("a", "b"), patience=2, warmup=3)
    a = result["table"]["a"]
    assert 0.2 < a["threshold"] <= 1.0  # between the noise and the rise
    assert a["test"].recall == 1.0 and a["test"].false_alarms == 0 and a["test"].n_hacked == 3
    assert a["test"].median_lead == 12 - 10  # rose at 9, patience 2: fires at 10
    assert result["test_seeds"] == [2]
    assert result["table"][COMBINED]["test"].recall == 1.0


def test_a_detector_that_never_fires_has_zero_recall_and_no_lead():
    from minirlhf.calibration import Detector, score

    runs = [synthetic_run("h", 1, True, signal_rise_at=None), synthetic_run("ok", 1, False)]
    s = score(Detector({"a": 5.0}), runs)
    assert (s.recall, s.false_alarms, s.leads) == (0.0, 0, [])
    assert math.isnan(s.median_lead)


def test_leave_one_seed_out_scores_every_run_once_out_of_sample():
    from minirlhf.calibration import cross_validate

    runs = []
    for seed in (1, 2, 3):
        runs += [synthetic_run(f"h{seed}{i}", seed, True, signal_rise_at=9) for i in range(2)]
        runs += [synthetic_run(f"ok{seed}{i}", seed, False) for i in range(2)]
    result = cross_validate(runs, detectors=("a", "b"))
    a = result["table"]["a"]["test"]
    assert (a.n_hacked, a.n_healthy) == (6, 6)  # every run once
    assert a.recall == 1.0 and a.false_alarms == 0 and a.median_lead == 2
    assert [f["held_out"] for f in result["folds"]] == [1, 2, 3]
    assert set(result["fires"]) == {r.name for r in runs}


def write_curve(run, folder):
    folder.mkdir(parents=True)
    rows = [{"step": s, "ppo/gold_reward": g, "ppo/proxy_reward": p,
             **{f"ppo/signal/{k}": v[i] for k, v in run.signals.items()}}
            for i, (s, g, p) in enumerate(zip(run.steps, run.gold, run.proxy))]
    (folder / "curve.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return {"name": run.name, "kl_coef": run.kl_coef, "seed": run.seed, "defended": False, "ppo_dir": folder}


def test_a_defended_run_warns_by_thresholds_chosen_without_its_seed(tmp_path):
    """held_out_warnings: seed s's warning is the fold that left s out; what s's own runs did cannot change it."""
    from minirlhf.calibration import held_out_warnings
    from minirlhf.config import load_config

    cfg = load_config(None).model_copy(update={"hacking": load_config(None).hacking.model_copy(
        update={"onset_window": 1})})

    def points(rise_at_seed3, folder):
        runs = []
        for seed in (1, 2, 3):
            rise = rise_at_seed3 if seed == 3 else 9
            runs += [synthetic_run(f"h{seed}{i}", seed, True, signal_rise_at=rise) for i in range(2)]
            runs += [synthetic_run(f"ok{seed}{i}", seed, False) for i in range(2)]
        return [write_curve(r, tmp_path / folder / r.name) for r in runs]

    warnings = held_out_warnings(cfg, points(9, "same"), detectors=("a", "b"))
    assert set(warnings) == {1, 2, 3}
    assert all(set(w["thresholds"]) == {"a"} and w["min_signals"] == 1 for w in warnings.values())
    assert 0.2 < warnings[3]["thresholds"]["a"] <= 1.0
    # Seed 3's hacked runs never show the signal: the folds that train on seed 3 change, seed 3's own does not.
    changed = held_out_warnings(cfg, points(None, "seed3-silent"), detectors=("a", "b"))
    assert changed[3] == warnings[3]
    assert changed[1] != warnings[1]
    fixed = held_out_warnings(cfg, points(9, "split"), train_seeds=(1,), detectors=("a", "b"))
    assert fixed[1] == fixed[2] == fixed[3]
