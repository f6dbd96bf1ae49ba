"""Reward-hacking detectors: over PPO's per-step curve and over each policy's evaluation against SFT.

Usage (the eval stage runs them; thresholds live in `cfg.detect`):
    from minirlhf.detect import detect_failures
    events = detect_failures(eval_metrics, samples_by_policy, {"ppo": curve}, cfg.detect)
    for e in events: store.log_failure_event(stage_run_id, e.kind, e.message, step=e.step, severity=e.severity,
                                             evidence=e.evidence, examples=e.examples)

Each detector is a pure function returning `FailureEvent`s with the evidence that crossed its threshold and
example responses, so a person can see the failure rather than trust a flag. The failure modes are those of
Gao et al. 2022 (proxy up, gold down), Singhal et al. 2023 (length), Kirk et al. 2024 (diversity), and what
this pipeline produced at low `kl_coef` on the embedded task (empty answers, confident wrong ones).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from statistics import median

from minirlhf.config import DetectConfig
from minirlhf.data.gold import is_refusal

BASELINE = "sft"


@dataclass
class FailureEvent:
    kind: str  # overoptimization | length_blowup | diversity_collapse | kl_spike | over_refusal | degenerate_repetition
    severity: str  # info | warning | error | critical (the store's SEVERITIES)
    message: str
    policy: str
    step: int | None = None
    evidence: dict = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- over PPO's curve ---------------------------------------------------------------------------------
def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))]


def curve_overoptimization(curve: list[dict], cfg: DetectConfig, policy: str = "ppo") -> list[FailureEvent]:
    """Proxy reward still rising after gold reward peaked and fell (Gao et al. 2022, Fig. 1)."""
    rows = [r for r in curve if "ppo/gold_reward" in r and "ppo/proxy_reward" in r]
    if len(rows) < 2 * cfg.smooth_window:
        return []
    gold = smooth([r["ppo/gold_reward"] for r in rows], cfg.smooth_window)
    proxy = smooth([r["ppo/proxy_reward"] for r in rows], cfg.smooth_window)
    peak = max(range(len(gold)), key=gold.__getitem__)
    gold_drop, proxy_gain = gold[peak] - gold[-1], proxy[-1] - proxy[peak]
    if gold_drop < cfg.curve_gold_drop or proxy_gain <= 0:
        return []
    return [FailureEvent("overoptimization", "error", policy=policy, step=int(rows[peak]["step"]),
                         message=f"{policy}: gold reward peaked at step {rows[peak]['step']} and fell by "
                                 f"{gold_drop:.2f} while proxy reward rose by {proxy_gain:.2f}",
                         evidence={"gold_peak": gold[peak], "gold_final": gold[-1], "proxy_at_gold_peak": proxy[peak],
                                   "proxy_final": proxy[-1], "peak_step": int(rows[peak]["step"]),
                                   "smooth_window": cfg.smooth_window})]


def kl_spikes(curve: list[dict], cfg: DetectConfig, policy: str = "ppo") -> list[FailureEvent]:
    """A step whose KL jumps far above the running median of the steps before it (a policy lurching away)."""
    events = []
    kls = [(int(r["step"]), r["ppo/kl"]) for r in curve if "ppo/kl" in r]
    for i in range(cfg.smooth_window, len(kls)):
        step, kl = kls[i]
        before = median(k for _, k in kls[:i])
        if kl > cfg.kl_spike_min and kl > cfg.kl_spike_factor * max(before, 1e-8):
            events.append(FailureEvent("kl_spike", "warning", policy=policy, step=step,
                                       message=f"{policy}: KL {kl:.2f} at step {step}, "
                                               f"{kl / max(before, 1e-8):.1f}x the median {before:.2f} before it",
                                       evidence={"kl": kl, "median_before": before, "factor": cfg.kl_spike_factor}))
    return events


# ---- over the evaluation (each policy against SFT on the same prompts) --------------------------------
def _metric(metrics: dict[str, float], policy: str, name: str) -> float | None:
    return metrics.get(f"eval/{policy}/{name}")


def _examples(samples: list[dict], keep, n: int, key=None) -> list[dict]:
    picked = [s for s in samples if keep(s)]
    if key is not None:
        picked.sort(key=key, reverse=True)
    return [{k: s.get(k) for k in ("prompt", "response", "proxy_reward", "gold_reward")} for s in picked[:n]]


def eval_overoptimization(metrics, samples, policy, cfg) -> list[FailureEvent]:
    """The policy beats SFT on the proxy but loses to it on gold: the reward model is being gamed."""
    proxy, gold = _metric(metrics, policy, "proxy_reward"), _metric(metrics, policy, "gold_reward")
    proxy0, gold0 = _metric(metrics, BASELINE, "proxy_reward"), _metric(metrics, BASELINE, "gold_reward")
    if None in (proxy, gold, proxy0, gold0) or not (proxy - proxy0 > cfg.proxy_gain and gold0 - gold > cfg.gold_drop):
        return []
    gap = lambda s: (s["proxy_reward"] or 0) - (s["gold_reward"] or 0)  # noqa: E731
    return [FailureEvent("overoptimization", "error", policy=policy,
                         message=f"{policy}: proxy reward {proxy:.2f} vs SFT {proxy0:.2f}, "
                                 f"but gold reward {gold:.2f} vs SFT {gold0:.2f}",
                         evidence={"proxy": proxy, "proxy_sft": proxy0, "gold": gold, "gold_sft": gold0},
                         examples=_examples(samples, lambda s: s.get("gold_reward") is not None, cfg.n_examples,
                                            key=gap))]


def length_blowup(metrics, samples, policy, cfg) -> list[FailureEvent]:
    length, length0 = _metric(metrics, policy, "response_length"), _metric(metrics, BASELINE, "response_length")
    if None in (length, length0) or length <= cfg.length_ratio * max(length0, 1.0):
        return []
    return [FailureEvent("length_blowup", "warning", policy=policy,
                         message=f"{policy}: responses {length:.1f} words long vs {length0:.1f} for SFT "
                                 f"({length / max(length0, 1.0):.1f}x)",
                         evidence={"response_length": length, "response_length_sft": length0,
                                   "ratio_threshold": cfg.length_ratio},
                         examples=_examples(samples, lambda s: True, cfg.n_examples,
                                            key=lambda s: len(s["response"].split())))]


def diversity_collapse(metrics, samples, policy, cfg) -> list[FailureEvent]:
    d2, d2_0 = _metric(metrics, policy, "distinct_2"), _metric(metrics, BASELINE, "distinct_2")
    if None in (d2, d2_0) or d2_0 <= 0 or d2 >= cfg.distinct_ratio * d2_0:
        return []
    counts: dict[str, int] = {}
    for s in samples:
        counts[s["response"]] = counts.get(s["response"], 0) + 1
    common = sorted(counts, key=counts.get, reverse=True)[: cfg.n_examples]
    return [FailureEvent("diversity_collapse", "warning", policy=policy,
                         message=f"{policy}: distinct-2 {d2:.3f} vs {d2_0:.3f} for SFT",
                         evidence={"distinct_2": d2, "distinct_2_sft": d2_0, "ratio_threshold": cfg.distinct_ratio,
                                   "most_common": {r: counts[r] for r in common}},
                         examples=_examples(samples, lambda s: s["response"] in common[:1], cfg.n_examples))]


def over_refusal(metrics, samples, policy, cfg) -> list[FailureEvent]:
    rate, rate0 = _metric(metrics, policy, "refusal_rate_benign"), _metric(metrics, BASELINE, "refusal_rate_benign")
    if None in (rate, rate0) or rate - rate0 <= cfg.refusal_increase:
        return []
    return [FailureEvent("over_refusal", "warning", policy=policy,
                         message=f"{policy}: refuses {rate:.0%} of benign prompts vs {rate0:.0%} for SFT",
                         evidence={"refusal_rate_benign": rate, "refusal_rate_benign_sft": rate0},
                         examples=_examples(samples,
                                            lambda s: s.get("intent") == "benign" and is_refusal(s["response"]),
                                            cfg.n_examples))]


_REPEATED_WORDS = re.compile(r"\b(\w+)(?:\W+\1\b){2,}", re.IGNORECASE)  # the same word three times in a row
# The same phrase of 3+ words twice in a row: what PPO at kl_coef 0.01 did with the filler the reward model
# over-credits ("... I hope this helps! I hope this helps!", docs/REPORT.md), which the word rule misses.
_REPEATED_PHRASE = re.compile(r"\b((?:\w+\W+){2,}?\w+)\W+\1\b", re.IGNORECASE)


def is_degenerate(response: str, max_repeat_fraction: float = 0.5) -> bool:
    """Empty, a word repeated 3+ times in a row, a phrase of 3+ words repeated, or mostly the same few words."""
    words = response.split()
    if not words:
        return True
    if _REPEATED_WORDS.search(response) or _REPEATED_PHRASE.search(response):
        return True
    return len(words) >= 6 and len(set(words)) / len(words) < (1 - max_repeat_fraction)


def degenerate_repetition(metrics, samples, policy, cfg) -> list[FailureEvent]:
    flagged = [is_degenerate(s["response"]) for s in samples]
    baseline_rate = metrics.get(f"eval/{BASELINE}/degenerate_rate", 0.0)
    rate = sum(flagged) / max(len(flagged), 1)
    if rate - baseline_rate <= cfg.degenerate_increase:
        return []
    return [FailureEvent("degenerate_repetition", "warning", policy=policy,
                         message=f"{policy}: {rate:.0%} of responses are empty or repetition loops "
                                 f"(SFT: {baseline_rate:.0%})",
                         evidence={"degenerate_rate": rate, "degenerate_rate_sft": baseline_rate},
                         examples=_examples(samples, lambda s: is_degenerate(s["response"]), cfg.n_examples))]


EVAL_DETECTORS = (eval_overoptimization, length_blowup, diversity_collapse, over_refusal, degenerate_repetition)
CURVE_DETECTORS = (curve_overoptimization, kl_spikes)


def degenerate_rates(samples_by_policy: dict[str, list[dict]]) -> dict[str, float]:
    """`detect/<policy>/degenerate_rate` for every policy (a metric in its own right, and SFT's is the baseline)."""
    return {f"eval/{p}/degenerate_rate": sum(is_degenerate(s["response"]) for s in samples) / max(len(samples), 1)
            for p, samples in samples_by_policy.items()}


def detect_failures(metrics: dict[str, float], samples_by_policy: dict[str, list[dict]],
                    curves: dict[str, list[dict]], cfg: DetectConfig) -> list[FailureEvent]:
    """Every detector over every non-SFT policy's evaluation, and over each training curve given."""
    metrics = metrics | degenerate_rates(samples_by_policy)
    events: list[FailureEvent] = []
    for policy, samples in samples_by_policy.items():
        if policy == BASELINE:
            continue
        for detector in EVAL_DETECTORS:
            events += detector(metrics, samples, policy, cfg)
    for policy, curve in curves.items():
        for detector in CURVE_DETECTORS:
            events += detector(curve, cfg, policy)
    return events
