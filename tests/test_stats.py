"""minirlhf.stats: the paired bootstrap against what it must do (fast tier)."""

import random

import pytest

from minirlhf.stats import Interval, mean_gain, paired_bootstrap, win_rate


def test_win_rate_counts_ties_half_and_mean_gain_is_the_mean_difference():
    assert win_rate([1, 2, 3, 4], [0, 2, 5, 1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert mean_gain([1.0, 2.0], [0.5, 3.0]) == pytest.approx((0.5 - 1.0) / 2)


def test_identical_policies_win_half_with_no_spread():
    scores = [[random.Random(i).random() for i in range(50)]]
    assert paired_bootstrap(scores, scores, win_rate, n_resamples=200) == Interval(0.5, 0.5, 0.5)


def test_pairing_cancels_prompt_difficulty():
    # Prompts differ a lot in difficulty; a beats b by exactly 0.1 on every one: paired, the gain is certain.
    rng = random.Random(1)
    difficulty = [rng.gauss(0, 3) for _ in range(100)]
    a, b = [[d + 0.1 for d in difficulty]], [difficulty]
    ci = paired_bootstrap(a, b, mean_gain, n_resamples=300)
    assert ci.value == pytest.approx(0.1) and ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.1)
    assert paired_bootstrap(a, b, win_rate, n_resamples=300) == Interval(1.0, 1.0, 1.0)


def test_the_interval_covers_the_true_win_rate_about_95_percent_of_the_time():
    true_p, covered, trials = 0.6, 0, 120
    for t in range(trials):
        rng = random.Random(100 + t)
        a = [[1.0 if rng.random() < true_p else 0.0 for _ in range(80)]]
        ci = paired_bootstrap(a, [[0.5] * 80], win_rate, n_resamples=400, seed=t)
        covered += ci.low <= true_p <= ci.high
    assert 0.88 <= covered / trials <= 0.99, covered / trials


def test_seeds_that_disagree_widen_the_interval():
    rng = random.Random(2)
    base = [rng.gauss(0, 1) for _ in range(100)]
    noise = [rng.gauss(0, 0.5) for _ in range(100)]
    one_seed = [[x + 0.3 + e for x, e in zip(base, noise)]] * 3
    seeds_apart = [[x + shift + e for x, e in zip(base, noise)] for shift in (-0.3, 0.3, 0.9)]
    narrow = paired_bootstrap(one_seed, [base], mean_gain, n_resamples=500)
    wide = paired_bootstrap(seeds_apart, [base], mean_gain, n_resamples=500)
    assert narrow.value == pytest.approx(wide.value)  # same mean gain, 0.3
    assert (wide.high - wide.low) > 3 * (narrow.high - narrow.low)
    assert wide.low < 0.3 < wide.high and not wide.overlaps(Interval(-1, -1, -0.5))


def test_a_baseline_row_per_seed_is_paired_seed_by_seed():
    a = [[1.0, 2.0], [3.0, 4.0]]
    assert paired_bootstrap(a, [[0.0, 0.0], [3.0, 4.0]], mean_gain, n_resamples=50).value == pytest.approx(0.75)
    assert paired_bootstrap(a, [[0.0, 0.0]], mean_gain, n_resamples=50).value == pytest.approx(2.5)


@pytest.mark.parametrize("a, b, message", [
    ([], [[1.0]], "at least one seed"),
    ([[1.0, 2.0]], [[1.0]], "same prompts"),
    ([[1.0], [2.0]], [[1.0], [2.0], [3.0]], "b has 3 seeds"),
])
def test_malformed_scores_are_refused_with_what_to_fix(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(a, b)
