"""PPO core math (fast tier): every function against a naive reference in plain Python, or numbers
computed by hand in the comments."""

import math
import statistics

import pytest
import torch

from minirlhf.ppo import core


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- naive references: plain Python over lists, written without the module --------------------------
def mask_from_lengths(lengths, width):
    return torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])


def real_values(x, lengths):
    return [v for row, n in zip(x.tolist(), lengths) for v in row[:n]]


def naive_gae(rewards, values, lengths, gamma, lam):
    """GAE per row over its real tokens only; the value after the last one is 0."""
    advantages = []
    for r, v, n in zip(rewards, values, lengths):
        row, last = [0.0] * len(r), 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            last = r[t] + gamma * next_v - v[t] + gamma * lam * last
            row[t] = last
        advantages.append(row)
    return advantages


def naive_log_softmax(row):
    top = max(row)
    log_z = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_z for v in row]


LENGTHS, WIDTH = [5, 3, 1, 4], 5


def random_batch():
    return torch.randn(len(LENGTHS), WIDTH), mask_from_lengths(LENGTHS, WIDTH)


def fill_padding(x, mask, value):
    x = x.clone()
    x[mask == 0] = value
    return x


# ---- masked statistics -----------------------------------------------------------------------------
def test_masked_stats_against_python():
    x, mask = random_batch()
    flat = real_values(x, LENGTHS)
    assert core.masked_sum(x, mask).item() == pytest.approx(sum(flat), abs=1e-5)
    assert core.masked_mean(x, mask).item() == pytest.approx(statistics.fmean(flat), abs=1e-6)
    assert core.masked_var(x, mask).item() == pytest.approx(statistics.variance(flat), abs=1e-5)
    assert core.masked_var(x, mask, unbiased=False).item() == pytest.approx(statistics.pvariance(flat), abs=1e-5)
    rows = [row[:n] for row, n in zip(x.tolist(), LENGTHS)]
    assert core.masked_sum(x, mask, dim=1).tolist() == pytest.approx([sum(r) for r in rows], abs=1e-5)
    assert core.masked_mean(x, mask, dim=1).tolist() == pytest.approx([statistics.fmean(r) for r in rows], abs=1e-5)
    assert core.masked_mean(x, mask.bool()).item() == pytest.approx(statistics.fmean(flat), abs=1e-6)  # bool masks too


def test_masked_stats_by_hand_and_empty_rows():
    x = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -7.0, -7.0]])
    mask = mask_from_lengths([3, 2], 4)
    assert core.masked_sum(x, mask).item() == 15.0
    assert core.masked_mean(x, mask).item() == 3.0
    assert core.masked_var(x, mask).item() == pytest.approx(2.5)  # sum of squares 10 over n-1 = 4
    assert core.masked_var(x, mask, unbiased=False).item() == pytest.approx(2.0)
    assert core.masked_mean(x, torch.zeros_like(mask), dim=1).tolist() == [0.0, 0.0]  # no NaN on empty rows
    assert core.masked_var(x, mask_from_lengths([1, 0], 4)).item() == 0.0  # one token: no Bessel 0/0


@pytest.mark.parametrize("pad", [1234.0, -5.0, float("nan")])
def test_masking_excludes_padding(pad):
    x, mask = random_batch()
    y = torch.randn_like(x)
    padded, y_padded = fill_padding(x, mask, pad), fill_padding(y, mask, pad)
    for fn in (core.masked_sum, core.masked_mean, core.masked_var, core.masked_whiten):
        assert torch.equal(fn(padded, mask), fn(x, mask)), fn.__name__
    assert torch.equal(core.masked_mean(padded, mask, dim=1), core.masked_mean(x, mask, dim=1))
    assert torch.equal(core.compute_gae(padded, y_padded, mask, 0.9, 0.8)[0], core.compute_gae(x, y, mask, 0.9, 0.8)[0])
    assert torch.equal(core.shape_rewards(torch.ones(4), padded, y_padded, mask, 0.1)[0],
                       core.shape_rewards(torch.ones(4), x, y, mask, 0.1)[0])
    assert torch.equal(core.policy_loss(padded, y_padded, y, mask, 0.2)[0], core.policy_loss(x, y, y, mask, 0.2)[0])
    assert torch.equal(core.value_loss(padded, y, y_padded, mask, 0.2)[0], core.value_loss(x, y, y, mask, 0.2)[0])
    assert core.explained_variance(padded, y_padded, mask) == core.explained_variance(x, y, mask)


def test_masked_whiten():
    x, mask = random_batch()
    x = x * 3 + 2
    w = core.masked_whiten(x, mask)
    flat, mean = real_values(x, LENGTHS), statistics.fmean(real_values(x, LENGTHS))
    std = math.sqrt(statistics.variance(flat) + 1e-8)
    assert real_values(w, LENGTHS) == pytest.approx([(v - mean) / std for v in flat], abs=1e-5)
    assert core.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert core.masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert (w[mask == 0] == 0).all()
    scaled = core.masked_whiten(x, mask, shift_mean=False)  # rescale only: the mean stays
    assert real_values(scaled, LENGTHS) == pytest.approx([(v - mean) / std + mean for v in flat], abs=1e-5)
    assert (scaled[mask == 0] == 0).all()


# ---- log-probabilities, entropy, KL -----------------------------------------------------------------
def test_logprobs_and_entropy_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]])  # p = [1/4, 3/4], then [1/2, 1/2]
    labels = torch.tensor([[1, 0]])
    assert core.logprobs_from_logits(logits, labels)[0].tolist() == pytest.approx([math.log(0.75), math.log(0.5)])
    expected = [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2.0)]
    assert core.entropy_from_logits(logits)[0].tolist() == pytest.approx(expected)
    banned = torch.tensor([[[0.0, 0.0, float("-inf")]]])  # a -inf logit contributes 0, not NaN
    assert core.entropy_from_logits(banned).item() == pytest.approx(math.log(2.0))


def test_logprobs_and_entropy_against_python():
    logits, labels = torch.randn(2, 3, 7) * 4, torch.randint(0, 7, (2, 3))
    logp = core.logprobs_from_logits(logits.to(torch.bfloat16), labels)
    assert logp.shape == (2, 3) and logp.dtype == torch.float32  # computed in float32
    logp, ent = core.logprobs_from_logits(logits, labels), core.entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            row = naive_log_softmax(logits[b, t].tolist())
            assert logp[b, t].item() == pytest.approx(row[labels[b, t]], abs=1e-5)
            assert ent[b, t].item() == pytest.approx(-sum(math.exp(v) * v for v in row), abs=1e-5)


def test_kl_estimators():
    logp, ref = torch.log(torch.tensor([0.5, 0.2])), torch.log(torch.tensor([0.25, 0.4]))
    assert core.kl_k1(logp, ref).tolist() == pytest.approx([math.log(2.0), math.log(0.5)])
    # k3 = (r - 1) - log r with r = ref/p: r = 0.5 -> -0.5 + log 2; r = 2 -> 1 - log 2
    assert core.kl_k3(logp, ref).tolist() == pytest.approx([-0.5 + math.log(2.0), 1.0 - math.log(2.0)])
    assert (core.kl_k3(torch.randn(1000) * 3, torch.randn(1000) * 3) >= 0).all()
    assert core.kl_k3(logp, logp).abs().max() == 0  # 0 where the policies agree
    # both are unbiased: their expectation under p is KL(p || q); p, q are small distributions by hand
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    true_kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    for kind in ("k1", "k3"):
        assert (p * core.kl_penalty(p.log(), q.log(), kind)).sum().item() == pytest.approx(true_kl, abs=1e-6)
    with pytest.raises(ValueError, match="k1"):
        core.kl_penalty(p, q, "k2")


# ---- rewards and advantages -------------------------------------------------------------------------
def test_shape_rewards_score_on_last_token_and_eos_penalty():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -9.0], [-1.0, -1.0, -1.0]])
    mask = mask_from_lengths([3, 2, 0], 3)
    scores, has_eos = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, True])
    rewards, non_score, kl = core.shape_rewards(scores, logp, ref, mask, kl_coef=0.1, missing_eos_penalty=-1.0,
                                                has_eos=has_eos)
    assert kl[0].tolist() == pytest.approx([0.5, 0.0, -0.5])
    assert kl[1].tolist() == pytest.approx([0.0, -1.0, 0.0])  # padding excluded
    assert non_score[0].tolist() == pytest.approx([-0.05, 0.0, 0.05])
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.0, 0.05 + 1.0])  # has EOS: no penalty
    assert rewards[1].tolist() == pytest.approx([0.0, 0.1 + 2.0 - 1.0, 0.0])  # no EOS: score 2 - 1
    assert rewards[2].tolist() == [0.0, 0.0, 0.0]  # an empty row: no token to credit, no score
    no_penalty, _, _ = core.shape_rewards(scores, logp, ref, mask, kl_coef=0.1)
    assert no_penalty[1, 1].item() == pytest.approx(0.1 + 2.0)
    with pytest.raises(ValueError, match="has_eos"):
        core.shape_rewards(scores, logp, ref, mask, 0.1, missing_eos_penalty=-1.0)


def test_shape_rewards_k3_against_loop():
    logp, ref = torch.randn(4, WIDTH), torch.randn(4, WIDTH)
    mask, scores = mask_from_lengths(LENGTHS, WIDTH), torch.randn(4)
    rewards, _, kl = core.shape_rewards(scores, logp, ref, mask, kl_coef=0.05, kl_kind="k3")
    for b, n in enumerate(LENGTHS):
        expected = [0.0] * WIDTH
        for t in range(n):
            r = math.exp(ref[b, t].item() - logp[b, t].item())
            expected[t] = -0.05 * ((r - 1) - math.log(r))
        expected[n - 1] += scores[b].item()
        assert rewards[b].tolist() == pytest.approx(expected, abs=1e-5)
    assert (kl >= 0).all()


def test_gae_by_hand_and_against_naive_loop():
    # one row of 3 tokens, gamma=1, lam=0.95, by hand (V after the last token is 0):
    # delta2 = 1 + 0 - 0.3 = 0.7; delta1 = 0 + 0.3 - 0.2 = 0.1; delta0 = 0 + 0.2 - 0.1 = 0.1
    # A2 = 0.7, A1 = 0.1 + 0.95*0.7 = 0.765, A0 = 0.1 + 0.95*0.765 = 0.82675; returns = A + V
    adv, ret = core.compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.1, 0.2, 0.3]]), torch.ones(1, 3),
                                1.0, 0.95)
    assert adv[0].tolist() == pytest.approx([0.82675, 0.765, 0.7])
    assert ret[0].tolist() == pytest.approx([0.92675, 0.965, 1.0])
    lengths = [6, 3, 1, 0]
    rewards, values, mask = torch.randn(4, 6), torch.randn(4, 6), mask_from_lengths(lengths, 6)
    adv, ret = core.compute_gae(rewards, values, mask, 0.9, 0.8)
    for row, ret_row, exp, v, n in zip(adv.tolist(), ret.tolist(),
                                       naive_gae(rewards.tolist(), values.tolist(), lengths, 0.9, 0.8),
                                       values.tolist(), lengths):
        assert row == pytest.approx(exp, abs=1e-5)
        assert ret_row == pytest.approx([a + vi for a, vi in zip(exp[:n], v[:n])] + [0.0] * (6 - n), abs=1e-5)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()
    assert torch.equal(core.compute_gae(rewards, values, mask.bool(), 0.9, 0.8)[0], adv)


# ---- losses -----------------------------------------------------------------------------------------
def test_policy_loss_clipping_and_clipfrac():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.1, 1.5, 0.5, 3.0]]))  # ratios 1.1 (inside), 1.5 (above), 0.5 (below), padding
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = core.policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: max(-1.1, -1.1) = -1.1 (unclipped); token 1: max(-1.5, -1.2) = -1.2 (clipped);
    # token 2: max(-1*-0.5, -1*-0.8) = max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.1 - 1.2 + 0.8) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["approxkl"].item() == pytest.approx(0.5 * sum(math.log(r) ** 2 for r in (1.1, 1.5, 0.5)) / 3)
    assert stats["ratio_max"].item() == pytest.approx(1.5)  # the padded ratio 3.0 is ignored
    assert stats["ratio_mean"].item() == pytest.approx((1.1 + 1.5 + 0.5) / 3)
    # ratio beyond the range on the side that does not help the objective: the unclipped term, no clipping
    # token 0: A=1, r=0.5 -> max(-0.5, -0.8) = -0.5; token 1: A=-1, r=1.5 -> max(1.5, 1.2) = 1.5
    new, adv = torch.log(torch.tensor([[0.5, 1.5]])), torch.tensor([[1.0, -1.0]])
    loss, stats = core.policy_loss(new, torch.zeros(1, 2), adv, torch.ones(1, 2), 0.2)
    assert loss.item() == pytest.approx((-0.5 + 1.5) / 2) and stats["clipfrac"].item() == 0.0


def test_policy_loss_equals_unclipped_surrogate_inside_range():
    old = torch.randn(3, 4)
    new = old + (torch.rand(3, 4) - 0.5) * 0.2  # |log r| < 0.1: ratios within [0.9, 1.1]
    adv, mask = torch.randn(3, 4), mask_from_lengths([4, 2, 3], 4)
    loss, stats = core.policy_loss(new, old, adv, mask, cliprange=0.2)
    rows = zip(adv.flatten().tolist(), new.flatten().tolist(), old.flatten().tolist(), mask.flatten().tolist())
    terms = [-a * math.exp(n - o) for a, n, o, m in rows if m]
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-6)
    assert stats["clipfrac"].item() == 0.0


def test_policy_loss_gradients_flow_through_logprobs_only():
    new = torch.randn(2, 3, requires_grad=True)
    old = torch.randn(2, 3, requires_grad=True)
    adv = torch.randn(2, 3, requires_grad=True)
    mask = mask_from_lengths([3, 2], 3)
    loss, stats = core.policy_loss(new, old, adv, mask, 10.0)  # wide range: nothing clipped
    loss.backward()
    assert old.grad is None and adv.grad is None
    assert all(not v.requires_grad for v in stats.values())
    # d/d logp of -A exp(logp - old) / n is -A r / n on real tokens, 0 on padding
    expected = torch.where(mask.bool(), -adv * torch.exp(new - old) / 5, 0.0).detach()
    assert torch.allclose(new.grad, expected, atol=1e-6)


def test_value_loss_clipping():
    old, returns = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, -1.0, 1.0]])
    values = torch.tensor([[0.5, 0.1, 0.1]])
    loss, stats = core.value_loss(values, old, returns, torch.ones(1, 3), cliprange_value=0.2)
    # token 0: unclipped (0.5-1)^2 = 0.25, clipped (0.2-1)^2 = 0.64 -> 0.64 (clipped term wins)
    # token 1: 1.21 vs 1.21 (inside the range) -> 1.21; token 2: 0.81 vs 0.81 -> 0.81
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21 + 0.81) / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    # moving past the range towards the return: the clipped value is farther, so the max keeps it
    # v = 0.9, old = 0, R = 1: unclipped 0.01, clipped (0.2 - 1)^2 = 0.64
    loss, stats = core.value_loss(torch.tensor([[0.9]]), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.5 * 0.64) and stats["clipfrac"].item() == 1.0


def test_value_loss_gradients_flow_through_values_only():
    values, old, returns = (torch.randn(2, 3, requires_grad=True) for _ in range(3))
    loss, _ = core.value_loss(values, old, returns, mask_from_lengths([3, 1], 3), cliprange_value=100.0)
    loss.backward()
    assert old.grad is None and returns.grad is None
    assert values.grad[1, 1:].abs().sum() == 0 and values.grad[0].abs().sum() > 0


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert core.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert core.explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)  # the mean
    # V = [1, 1, 1]: residuals [0, 1, 2], pvariance 2/3; Var(R) = 2/3 -> 0
    assert core.explained_variance(torch.ones(1, 4), returns, mask) == pytest.approx(0.0)
    # V = [2, 2, 4]: residuals [-1, 0, -1], pvariance 2/9 -> 1 - (2/9) / (2/3) = 2/3
    assert core.explained_variance(torch.tensor([[2.0, 2.0, 4.0, 9.0]]), returns, mask) == pytest.approx(2 / 3)
    assert math.isnan(core.explained_variance(returns, torch.ones(1, 4), mask))  # constant returns
    assert math.isnan(core.explained_variance(returns, returns, torch.zeros(1, 4)))  # no real tokens


# ---- EOS handling -----------------------------------------------------------------------------------
def test_first_true_indices_and_eos_mask():
    eos = 9
    # EOS at start, middle (twice), end, absent
    ids = torch.tensor([[9, 1, 2, 3], [1, 9, 2, 9], [1, 2, 3, 9], [1, 2, 3, 4]])
    assert core.first_true_indices(ids == eos).tolist() == [0, 1, 3, 4]
    assert core.first_true_indices(torch.tensor([[0, 1, 1], [0, 0, 0]])).tolist() == [1, 3]  # ints as bools
    mask, has_eos = core.response_mask_from_eos(ids, eos)
    assert mask.dtype == torch.float32
    assert mask.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert has_eos.dtype == torch.bool and has_eos.tolist() == [True, True, True, False]


# ---- KL controllers ---------------------------------------------------------------------------------
def test_adaptive_kl_controller():
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, n_steps=64)  # error 12/6 - 1 = 1, clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    before = ctl.value
    ctl.update(3.0, n_steps=64)  # error -0.5, clipped to -0.2
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 64 / 10000))
    before = ctl.value
    ctl.update(6.6, n_steps=128)  # error +0.1, inside the clip
    assert ctl.value == pytest.approx(before * (1 + 0.1 * 128 / 10000))
    before = ctl.value
    ctl.update(6.0, n_steps=64)  # on target: unchanged
    assert ctl.value == pytest.approx(before)
    restored = core.AdaptiveKLController(1.0, 1.0, 1)
    restored.load_state_dict(ctl.state_dict())
    assert restored.state_dict() == ctl.state_dict()
    assert all(type(v) in (float, int) for v in ctl.state_dict().values())  # plain numbers for checkpoints
    with pytest.raises(ValueError, match="finite"):
        ctl.update(float("nan"), 64)
    with pytest.raises(ValueError, match="target"):
        core.AdaptiveKLController(0.1, target=0.0, horizon=10000)


def test_fixed_kl_controller():
    fixed = core.FixedKLController(0.2)
    fixed.update(100.0, 64)
    assert fixed.value == 0.2 and fixed.state_dict() == {"value": 0.2}
    other = core.FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.2
