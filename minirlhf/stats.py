"""Confidence intervals for comparisons of policies that answer the same prompts.

Usage:
    from minirlhf.stats import paired_bootstrap, win_rate, mean_gain
    # scores[seed][prompt]: one policy's gold reward per prompt, one row per training seed (same prompts in all)
    ci = paired_bootstrap(ppo_scores, sft_scores, win_rate)      # Interval(value, low, high)
    ci = paired_bootstrap(ppo_scores, sft_scores, mean_gain, n_resamples=2000, seed=0)
    ci = bootstrap_mean([1, 0, 1, 1])                               # one sample's mean, e.g. an agreement rate

Paired: both policies answered the same prompts, so a resample draws prompt indices once and takes both policies'
scores at them (the prompt's difficulty cancels, as in a paired t-test). Over seeds too: with several training
seeds per policy, a resample first draws seeds (with replacement), then prompts, so the interval covers both the
luck of training and the choice of prompts (a two-level bootstrap; Efron & Tibshirani 1993, ch. 8). With one
seed it is the plain paired bootstrap over prompts. The interval is the percentile interval of the statistic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

Scores = Sequence[Sequence[float]]  # (seeds, prompts)


@dataclass(frozen=True)
class Interval:
    value: float  # the statistic on the data as observed
    low: float
    high: float

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Share of prompts where a scores above b, ties counted half."""
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def mean_gain(a: Sequence[float], b: Sequence[float]) -> float:
    """Mean of a - b over prompts."""
    return sum(x - y for x, y in zip(a, b)) / len(a)


def _pooled(stat: Callable, a: Scores, b: Scores, seeds: Sequence[int], prompts: Sequence[int]) -> float:
    """The statistic over the chosen (seed, prompt) pairs, pooled: every seed's prompts count alike."""
    xs = [a[s][p] for s in seeds for p in prompts]
    ys = [b[s if len(b) == len(a) else 0][p] for s in seeds for p in prompts]
    return stat(xs, ys)


def paired_bootstrap(a: Scores, b: Scores, stat: Callable[[Sequence[float], Sequence[float]], float] = win_rate,
                     n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of stat(a, b) over seeds and prompts, paired by prompt.

    a: (seeds, prompts) scores of the policy compared; b: the same shape, or one row (a baseline trained once,
    such as SFT, compared with every seed of a)."""
    if not a or not a[0]:
        raise ValueError("paired_bootstrap needs at least one seed with at least one prompt")
    n_prompts = len(a[0])
    if any(len(row) != n_prompts for row in (*a, *b)):
        raise ValueError("every seed of both policies must score the same prompts (rows of equal length)")
    if len(b) not in (1, len(a)):
        raise ValueError(f"b has {len(b)} seeds: give one row, or one per seed of a ({len(a)})")
    rng = random.Random(seed)
    n_seeds = len(a)
    observed = _pooled(stat, a, b, range(n_seeds), range(n_prompts))
    draws = sorted(
        _pooled(stat, a, b, [rng.randrange(n_seeds) for _ in range(n_seeds)],
                [rng.randrange(n_prompts) for _ in range(n_prompts)])
        for _ in range(n_resamples))
    tail = (1.0 - confidence) / 2
    return Interval(observed, draws[int(tail * (n_resamples - 1))], draws[int((1 - tail) * (n_resamples - 1))])


def first_mean(a: Sequence[float], b: Sequence[float]) -> float:
    """The mean of a (b unused): a policy's own mean, resampled like every other statistic."""
    return sum(a) / len(a)


def bootstrap_mean(values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> Interval:
    """The percentile bootstrap interval of the mean of one sample (e.g. a judge agreeing with each label, 0/1)."""
    return paired_bootstrap([list(values)], [list(values)], first_mean, n_resamples, confidence, seed)
