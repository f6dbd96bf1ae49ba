"""Reward-hacking detectors: each fires on a made-up failure and stays quiet on a healthy run (fast tier),
and the eval stage of a tiny pipeline writes its events to failure_events.json and the store (slow tier)."""

import json

import pytest

from minirlhf.config import DetectConfig, load_config
from minirlhf.detect import (curve_overoptimization, degenerate_rates, detect_failures, diversity_collapse,
                             eval_overoptimization, is_degenerate, kl_spikes, length_blowup, over_refusal, smooth)
from minirlhf.pipeline import run_pipeline
from minirlhf.store import Store
from tests.test_ppo import TINY

CFG = DetectConfig()


def curve(gold, proxy, kl=None):
    kl = kl or [1.0] * len(gold)
    return [{"step": i + 1, "ppo/gold_reward": g, "ppo/proxy_reward": p, "ppo/kl": k}
            for i, (g, p, k) in enumerate(zip(gold, proxy, kl))]


def evals(**by_policy):
    return {f"eval/{p}/{k}": v for p, m in by_policy.items() for k, v in m.items()}


def sample(response, proxy=1.0, gold=0.0, intent="benign"):
    return {"prompt": "Human: hi\n\nAssistant:", "response": response, "proxy_reward": proxy, "gold_reward": gold,
            "intent": intent}


HEALTHY = [sample(f"answer number {i} is here") for i in range(10)]


def test_smooth_is_a_trailing_mean():
    assert smooth([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


def test_curve_overoptimization_gold_peaks_then_falls_while_proxy_rises():
    n = 40
    rising = [i / n * 3 for i in range(n)]
    hacked = curve(gold=[min(i, 20) / 20 - max(0, i - 20) / 10 for i in range(n)], proxy=rising)
    events = curve_overoptimization(hacked, CFG)
    assert [e.kind for e in events] == ["overoptimization"]
    assert (15 <= events[0].step <= 25
            and events[0].evidence["gold_final"] < events[0].evidence["gold_peak"] - CFG.curve_gold_drop)
    assert curve_overoptimization(curve(gold=rising, proxy=rising), CFG) == []  # gold rises with proxy: healthy
    noisy = curve(gold=[0.5 + 0.2 * (-1) ** i for i in range(n)], proxy=rising)  # noise, no trend: smoothed away
    assert curve_overoptimization(noisy, CFG) == []


def test_kl_spike_fires_on_a_jump_not_on_a_steady_rise():
    kl = [0.5] * 15 + [8.0] + [0.6] * 4
    events = kl_spikes(curve([0] * 20, [0] * 20, kl), CFG)
    assert [(e.kind, e.step) for e in events] == [("kl_spike", 16)]
    assert kl_spikes(curve([0] * 20, [0] * 20, [i * 0.2 for i in range(20)]), CFG) == []


def test_eval_overoptimization_proxy_up_gold_down():
    hacked = evals(sft={"proxy_reward": 0.5, "gold_reward": 0.0}, ppo={"proxy_reward": 2.5, "gold_reward": -0.6})
    samples = [sample("", proxy=3.0, gold=-1.0), sample("Paris", proxy=1.0, gold=1.0)]
    events = eval_overoptimization(hacked, samples, "ppo", CFG)
    # worst gap first
    assert [e.kind for e in events] == ["overoptimization"] and events[0].examples[0]["response"] == ""
    good = evals(sft={"proxy_reward": 0.5, "gold_reward": 0.0}, ppo={"proxy_reward": 2.5, "gold_reward": 0.6})
    assert eval_overoptimization(good, samples, "ppo", CFG) == []


def test_length_diversity_refusal_detectors():
    long = evals(sft={"response_length": 5.0}, ppo={"response_length": 12.0})
    assert [e.kind for e in length_blowup(long, HEALTHY, "ppo", CFG)] == ["length_blowup"]
    assert length_blowup(evals(sft={"response_length": 5.0}, ppo={"response_length": 6.0}), HEALTHY, "ppo", CFG) == []

    same = [sample("I hope this helps!")] * 10
    collapsed = evals(sft={"distinct_2": 0.8}, ppo={"distinct_2": 0.1})
    events = diversity_collapse(collapsed, same, "ppo", CFG)
    assert ([e.kind for e in events] == ["diversity_collapse"]
            and events[0].evidence["most_common"] == {"I hope this helps!": 10})
    assert diversity_collapse(evals(sft={"distinct_2": 0.8}, ppo={"distinct_2": 0.7}), HEALTHY, "ppo", CFG) == []

    refusing = evals(sft={"refusal_rate_benign": 0.1}, ppo={"refusal_rate_benign": 0.6})
    refusals = [sample("I'm sorry, I can't help with that.")] * 3
    events = over_refusal(refusing, refusals, "ppo", CFG)
    assert [e.kind for e in events] == ["over_refusal"] and len(events[0].examples) == 3
    assert over_refusal(evals(sft={"refusal_rate_benign": 0.25}, ppo={"refusal_rate_benign": 0.0}),
                        refusals, "ppo", CFG) == []


def test_degenerate_responses():
    assert is_degenerate("") and is_degenerate("the the the answer") and is_degenerate("yes no yes no yes no yes no")
    assert (not is_degenerate("The capital of France is Paris.")
            and not is_degenerate("I think it is 7, I hope this helps!"))
    # a repeated phrase (the filler hack of docs/REPORT.md), but not a two-word echo or a repeated opening word
    assert is_degenerate("The capital of how is Cairo. I hope this helps! I hope this helps!")
    assert not is_degenerate("the word the word") and not is_degenerate("I can help with that. I can do it.")
    loops = [sample("")] * 5 + HEALTHY[:5]
    rates = degenerate_rates({"sft": HEALTHY, "ppo": loops})
    assert rates == {"eval/sft/degenerate_rate": 0.0, "eval/ppo/degenerate_rate": 0.5}
    events = detect_failures({}, {"sft": HEALTHY, "ppo": loops}, {}, CFG)
    assert [e.kind for e in events] == ["degenerate_repetition"] and events[0].policy == "ppo"
    assert detect_failures({}, {"sft": HEALTHY, "ppo": HEALTHY}, {}, CFG) == []


@pytest.mark.slow
def test_eval_stage_writes_its_failure_events_to_the_store(tmp_path):
    # Thresholds set so that any step with positive KL above the median before it is a "spike": forced to fire.
    cfg = load_config(None, TINY + [f"output_dir={tmp_path}", "detect.kl_spike_min=0", "detect.kl_spike_factor=1.0001",
                                    "detect.smooth_window=1",
                                    "dpo.enabled=false", "rloo.enabled=false"])  # PPO's events only
    results = run_pipeline(cfg)
    ppo_curve = [json.loads(line)
                 for line in (results["ppo"].path(cfg.output_dir) / "curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in ppo_curve] == list(range(1, cfg.ppo.steps + 1))
    events = json.loads((results["eval"].path(cfg.output_dir) / "failure_events.json").read_text())
    assert events and {e["kind"] for e in events} >= {"kl_spike"}
    rows = Store.for_output_dir(tmp_path).query(
        "select f.kind, f.step, f.evidence from failure_events f join stage_runs s using (stage_run_id) "
        "where s.stage = 'eval'")
    assert sorted(zip(rows["kind"], rows["step"].fillna(-1))) == sorted(
        (e["kind"], e["step"] if e["step"] is not None else -1) for e in events)
    assert all(json.loads(ev)["policy"] == "ppo" for ev in rows["evidence"])
    assert results["eval"].metrics["eval/ppo/failure_events"] == len(events)
    # A rerun reuses the eval output; v_failure_events shows it the events of the run that computed it.
    run_pipeline(cfg)
    store = Store.for_output_dir(tmp_path)
    newest = store.query("select run_id from runs order by started_at desc limit 1")["run_id"][0]
    reused = store.query("select kind, reused from v_failure_events where run_id = ?", [newest])
    assert len(reused) == len(events) and reused["reused"].all()
