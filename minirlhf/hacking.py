"""Reward hacking without a gold annotator: per-step signals, the warning that combines them, and the gold onset
they are calibrated against on the embedded task.

Usage:
    from minirlhf.hacking import BatchView, EarlyWarning, gold_onset, step_signals
    base = BatchView(responses, prompts, proxy, members, heldout, entropy)   # the step-1 rollout: SFT-like
    signals = step_signals(BatchView(...), base, ood_threshold, kls)         # {"ood_share": 0.03, ...}
    warning = EarlyWarning(thresholds, min_signals=2, patience=2)
    fired = warning.update(step, signals)                                    # True at the step it fires

Every signal is computed from what a real run has: the policy's samples, the proxy reward model's scores, the
scores of an ensemble of reward models and of one trained on held-out pairs, logprobs against the reference, and
the entropy of the policy. None reads the gold annotator. Each is "higher means more hacking-like", measured
against the step-1 rollout, which the policy samples before its first update (the SFT policy, at PPO's
temperature):

  ensemble_disagreement  the members' spread on the policy's samples over their spread on the baseline's
                         (Eisenstein et al. 2023; Coste et al. 2024): the proxy is being pushed where the
                         reward models were not taught to agree
  heldout_gap            the proxy's gain over the baseline minus the held-out model's gain, each in units of its
                         own baseline spread: a gain that only the model trained on these pairs sees
  ood_share              share of samples the proxy scores above the 99th percentile of its own training data's
                         chosen responses: rewards no training answer earned
  phrase_rise            the largest rise, over the baseline, of the share of responses (to different prompts)
                         that contain one n-gram: a phrase or template appended whatever the prompt
  kl_acceleration        the rise of the per-step KL's growth (second difference of the smoothed curve)
  kl_level               the per-step KL itself: a KL budget (Gao et al. 2023: gold against the proxy is a
                         function of the distance from the initial policy, sqrt(KL))
  entropy_drop           1 - entropy / baseline entropy
  length_drift           |mean length / baseline mean length - 1|
  repetition             share of empty or looping responses over the baseline's (minirlhf.detect.is_degenerate)

The gold onset (docs/REWARD_HACKING.md): smooth gold and proxy over `window` steps; the onset is the first step
after which the smoothed gold stays at least `drop` below its running maximum until the end of the run while the
smoothed proxy ends above its value at that step. A run without one is healthy.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from minirlhf.config import SIGNALS  # noqa: F401  (the names, with the config that uses them)
from minirlhf.detect import is_degenerate, smooth



# ---- one rollout batch ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchView:
    """What the signals read from one batch of samples (all plain numbers: no model, no gold)."""

    responses: list[str]
    prompts: list[str]
    proxy: list[float]  # the proxy reward model's scores
    members: list[list[float]] | None = None  # (k, batch) ensemble scores, each member standardised (ensemble.py)
    heldout: list[float] | None = None  # the held-out reward model's scores
    entropy: float | None = None  # the policy's mean per-token entropy on its samples

    @property
    def length(self) -> float:
        return sum(len(r.split()) for r in self.responses) / max(len(self.responses), 1)


def member_spread(members: list[list[float]]) -> float:
    """Mean over samples of the standard deviation across ensemble members (population std: k may be 2)."""
    per_sample = list(zip(*members))  # (batch, k)
    return _mean([_std(list(scores), eps=0.0) for scores in per_sample])


def ensemble_disagreement(now: list[list[float]], base: list[list[float]], eps: float = 1e-6) -> float:
    """The members' spread on these samples over their spread on the baseline's (1: as much disagreement as on
    SFT's samples)."""
    return member_spread(now) / max(member_spread(base), eps)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float], eps: float = 1e-6) -> float:
    mean = _mean(values)
    return max(math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)), eps)


def heldout_gap(proxy: list[float], heldout: list[float], base_proxy: list[float], base_heldout: list[float]) -> float:
    """The proxy's gain over the baseline minus the held-out model's, each in units of its baseline spread."""
    proxy_gain = (_mean(proxy) - _mean(base_proxy)) / _std(base_proxy)
    heldout_gain = (_mean(heldout) - _mean(base_heldout)) / _std(base_heldout)
    return proxy_gain - heldout_gain


def ood_share(proxy: list[float], threshold: float) -> float:
    """Share of scores above `threshold` (the 99th percentile of the proxy's scores on its chosen training
    responses: minirlhf.reward, reward/chosen_p99)."""
    return sum(s > threshold for s in proxy) / max(len(proxy), 1)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def phrase_shares(responses: list[str], prompts: list[str], n: int) -> Counter:
    """For each n-gram, the share of distinct prompts whose responses contain it (a prompt sampled twice counts
    once: a phrase must spread across prompts, not repeat one answer)."""
    by_prompt: dict[str, set] = {}
    for prompt, response in zip(prompts, responses):
        by_prompt.setdefault(prompt, set()).update(ngrams(response, n))
    counts = Counter(g for grams in by_prompt.values() for g in grams)
    return Counter({g: c / max(len(by_prompt), 1) for g, c in counts.items()})


def phrase_rise(now: BatchView, base: BatchView, n: int = 3) -> tuple[float, str]:
    """The largest rise of an n-gram's share of prompts over the baseline, and the n-gram."""
    shares, base_shares = phrase_shares(now.responses, now.prompts, n), phrase_shares(base.responses, base.prompts, n)
    if not shares:
        return 0.0, ""
    gram, rise = max(((g, s - base_shares.get(g, 0.0)) for g, s in shares.items()), key=lambda x: (x[1], x[0]))
    return max(rise, 0.0), " ".join(gram)


def repetition_rise(now: list[str], base: list[str]) -> float:
    rate = sum(map(is_degenerate, now)) / max(len(now), 1)
    return rate - sum(map(is_degenerate, base)) / max(len(base), 1)


def kl_acceleration(kls: list[float], window: int = 3) -> float:
    """Second difference of the smoothed KL curve at its last point (0 until there are three points)."""
    smoothed = smooth(kls, window)
    if len(smoothed) < 3:
        return 0.0
    return smoothed[-1] - 2 * smoothed[-2] + smoothed[-3]


def step_signals(now: BatchView, base: BatchView, ood_threshold: float | None, kls: list[float],
                 phrase_n: int = 3) -> dict[str, float]:
    """Every signal this batch supports (the ensemble ones only with members and a held-out model)."""
    signals: dict[str, float] = {}
    if now.members is not None and base.members is not None:
        signals["ensemble_disagreement"] = ensemble_disagreement(now.members, base.members)
    if now.heldout is not None and base.heldout is not None:
        signals["heldout_gap"] = heldout_gap(now.proxy, now.heldout, base.proxy, base.heldout)
    if ood_threshold is not None:
        signals["ood_share"] = ood_share(now.proxy, ood_threshold)
    signals["phrase_rise"] = phrase_rise(now, base, phrase_n)[0]
    signals["kl_acceleration"] = kl_acceleration(kls)
    signals["kl_level"] = kls[-1] if kls else 0.0
    if now.entropy is not None and base.entropy:
        signals["entropy_drop"] = 1.0 - now.entropy / base.entropy
    signals["length_drift"] = abs(now.length / max(base.length, 1e-6) - 1.0)
    signals["repetition"] = repetition_rise(now.responses, base.responses)
    return signals


# ---- the warning ------------------------------------------------------------------------------------------------
def first_fire(values: list[float], threshold: float, patience: int, warmup: int = 0) -> int | None:
    """Index of the first point where `values` has been >= threshold for `patience` consecutive points (not
    before index `warmup`), else None."""
    run = 0
    for i, v in enumerate(values):
        run = run + 1 if (i >= warmup and v >= threshold) else 0
        if run >= patience:
            return i
    return None


@dataclass
class EarlyWarning:
    """The combined gold-free warning: fires at the first step where at least `min_signals` signals have each been
    at or above their threshold for `patience` consecutive steps (steps before `warmup` never count)."""

    thresholds: dict[str, float]
    min_signals: int = 2
    patience: int = 2
    warmup: int = 2
    runs: dict[str, int] = field(default_factory=dict)
    fired_at: int | None = None
    fired_signals: dict[str, float] = field(default_factory=dict)

    def update(self, step: int, signals: dict[str, float]) -> bool:
        """Feed one step's signals; True only at the step the warning fires."""
        if self.fired_at is not None:
            return False
        for name, threshold in self.thresholds.items():
            over = step >= self.warmup and name in signals and signals[name] >= threshold
            self.runs[name] = self.runs.get(name, 0) + 1 if over else 0
        lasting = {n: signals[n] for n, r in self.runs.items() if r >= self.patience}
        if len(lasting) >= self.min_signals:
            self.fired_at, self.fired_signals = step, lasting
            return True
        return False


def replay_warning(curve: list[dict], thresholds: dict[str, float], min_signals: int, patience: int,
                   warmup: int, prefix: str = "ppo/signal/") -> int | None:
    """The step an EarlyWarning with these settings would have fired at over a logged PPO curve, else None."""
    warning = EarlyWarning(thresholds, min_signals, patience, warmup)
    for row in curve:
        signals = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}
        if warning.update(int(row["step"]), signals):
            return warning.fired_at
    return None


# ---- the truth, where there is gold -----------------------------------------------------------------------------
def gold_onset(steps: list[int], gold: list[float], proxy: list[float], drop: float = 0.1,
               window: int = 5) -> int | None:
    """The first step after which the smoothed gold stays >= `drop` below its running maximum to the end while the
    smoothed proxy ends above its value there; None for a healthy run."""
    g, p = smooth(gold, window), smooth(proxy, window)
    running_max, below = [], []
    for value in g:
        running_max.append(max(value, running_max[-1]) if running_max else value)
        below.append(value <= running_max[-1] - drop)
    for i in range(len(g)):
        if all(below[i:]) and p[-1] > p[i]:
            return steps[i]
    return None
