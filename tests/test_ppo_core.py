"""PPO core math (fast tier): every function against a naive reference or numbers computed by hand."""

import math

import pytest
import torch

from minirlhf.ppo import core

torch.manual_seed(0)


def naive_gae(rewards, values, lengths, gamma, lam):
    """Plain-Python GAE per row, over its real tokens only (value after the last token is 0)."""
    advantages = []
    for r, v, n in zip(rewards, values, lengths):
        row, last = [0.0] * len(r), 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            last = r[t] + gamma * next_v - v[t] + gamma * lam * last
            row[t] = last
        advantages.append(row)
    return advantages


def mask_from_lengths(lengths, width):
    return torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])


def test_masked_stats_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -7.0, -7.0]])
    mask = mask_from_lengths([3, 2], 4)
    assert core.masked_sum(x, mask) == pytest.approx(15.0)
    assert core.masked_mean(x, mask) == pytest.approx(3.0)
    assert core.masked_var(x, mask) == pytest.approx(torch.tensor([1.0, 2, 3, 4, 5]).var().item())
    assert core.masked_var(x, mask, unbiased=False) == pytest.approx(2.0)
    assert core.masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 4.5])
    changed = x.clone()
    changed[mask == 0] = 1234.0
    assert core.masked_mean(changed, mask) == core.masked_mean(x, mask)
    assert core.masked_mean(x, torch.zeros_like(mask), dim=1).tolist() == [0.0, 0.0]  # no NaN on empty rows


def test_masked_whiten():
    x = torch.randn(4, 7) * 3 + 2
    mask = mask_from_lengths([7, 5, 2, 6], 7)
    w = core.masked_whiten(x, mask)
    assert core.masked_mean(w, mask) == pytest.approx(0.0, abs=1e-6)
    assert core.masked_var(w, mask) == pytest.approx(1.0, abs=1e-4)
    assert (w[mask == 0] == 0).all()
    scaled = core.masked_whiten(x, mask, shift_mean=False)
    assert core.masked_mean(scaled, mask) == pytest.approx(core.masked_mean(x, mask).item(), abs=1e-5)


def test_logprobs_and_entropy_against_softmax_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]])  # p = [1/4, 3/4], then [1/2, 1/2]
    labels = torch.tensor([[1, 0]])
    assert core.logprobs_from_logits(logits, labels).tolist()[0] == pytest.approx([math.log(0.75), math.log(0.5)])
    expected = [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2.0)]
    assert core.entropy_from_logits(logits).tolist()[0] == pytest.approx(expected)


def test_kl_estimators():
    logp, ref = torch.log(torch.tensor([0.5, 0.2])), torch.log(torch.tensor([0.25, 0.4]))
    assert core.kl_k1(logp, ref).tolist() == pytest.approx([math.log(2.0), math.log(0.5)])
    # k3 = (r - 1) - log r with r = ref/p: r = 0.5 -> 0.5 - 1 + log 2; r = 2 -> 1 - log 2
    assert core.kl_k3(logp, ref).tolist() == pytest.approx([-0.5 + math.log(2.0), 1.0 - math.log(2.0)])
    assert (core.kl_k3(torch.randn(1000), torch.randn(1000)) >= 0).all()
    # both are unbiased: their expectation under p equals KL(p||q)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    true_kl = (p * (p / q).log()).sum()
    for kind in ("k1", "k3"):
        est = (p * core.kl_penalty(p.log(), q.log(), kind)).sum()
        assert est == pytest.approx(true_kl.item(), abs=1e-6)
    with pytest.raises(ValueError, match="k1"):
        core.kl_penalty(p, q, "k2")


def test_shape_rewards_score_on_last_token_and_eos_penalty():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -9.0], [-1.0, -1.0, -1.0]])
    mask = mask_from_lengths([3, 2, 0], 3)
    scores = torch.tensor([1.0, 2.0, 3.0])
    has_eos = torch.tensor([True, False, True])
    rewards, non_score, kl = core.shape_rewards(scores, logp, ref, mask, kl_coef=0.1, missing_eos_penalty=-1.0, has_eos=has_eos)
    assert kl[0].tolist() == pytest.approx([0.5, 0.0, -0.5])
    assert kl[1].tolist() == pytest.approx([0.0, -1.0, 0.0])  # padding excluded
    assert non_score[0].tolist() == pytest.approx([-0.05, 0.0, 0.05])
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.0, 0.05 + 1.0])
    assert rewards[1].tolist() == pytest.approx([0.0, 0.1 + 2.0 - 1.0, 0.0])  # penalty: no EOS
    assert rewards[2].tolist() == pytest.approx([3.0, 0.0, 0.0])  # an empty row: score at position 0


def test_gae_by_hand_and_against_naive_loop():
    # one row of 3 tokens, gamma=1, lam=0.95, by hand:
    # delta2 = 1 - 0.3 = 0.7; delta1 = 0 + 0.3 - 0.2 = 0.1; delta0 = 0 + 0.2 - 0.1 = 0.1
    # A2 = 0.7, A1 = 0.1 + 0.95*0.7 = 0.765, A0 = 0.1 + 0.95*0.765 = 0.82675
    adv, ret = core.compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.1, 0.2, 0.3]]), torch.ones(1, 3), 1.0, 0.95)
    assert adv[0].tolist() == pytest.approx([0.82675, 0.765, 0.7])
    assert ret[0].tolist() == pytest.approx([0.92675, 0.965, 1.0])
    lengths = [6, 3, 1, 0]
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    mask = mask_from_lengths(lengths, 6)
    adv, ret = core.compute_gae(rewards, values, mask, 0.9, 0.8)
    expected = naive_gae(rewards.tolist(), values.tolist(), lengths, 0.9, 0.8)
    for row, exp in zip(adv.tolist(), expected):
        assert row == pytest.approx(exp, abs=1e-5)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()
    padded = rewards.clone()
    padded[mask == 0] = 50.0
    assert torch.allclose(core.compute_gae(padded, values, mask, 0.9, 0.8)[0], adv)


def test_policy_loss_clipping_and_clipfrac():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.1, 1.5, 0.5, 1.0]]))  # ratios 1.1 (inside), 1.5 (above), 0.5 (below), 1.0
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = core.policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: max(-1.1, -1.1) = -1.1; token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.1 - 1.2 + 0.8) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["approxkl"].item() == pytest.approx(0.5 * sum(math.log(r) ** 2 for r in (1.1, 1.5, 0.5)) / 3)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    inside, _ = core.policy_loss(torch.log(torch.tensor([[1.05, 0.9]])), torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), torch.ones(1, 2), 0.2)
    assert inside.item() == pytest.approx((-2.0 * 1.05 + 1.0 * 0.9) / 2)  # unclipped surrogate


def test_policy_loss_gradients_flow_through_new_logprobs_only():
    new = torch.zeros(2, 3, requires_grad=True)
    old = torch.zeros(2, 3, requires_grad=True)
    adv = torch.randn(2, 3, requires_grad=True)
    loss, _ = core.policy_loss(new, old.detach(), adv.detach(), torch.ones(2, 3), 0.2)
    loss.backward()
    assert new.grad is not None and new.grad.abs().sum() > 0
    assert old.grad is None and adv.grad is None


def test_value_loss_clipping():
    old, returns = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, -1.0]])
    values = torch.tensor([[0.5, 0.1]])
    loss, stats = core.value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 0: unclipped (0.5-1)^2 = 0.25, clipped (0.2-1)^2 = 0.64 -> 0.64; token 1: 1.21 vs 1.21 -> 1.21
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert core.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert core.explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    assert math.isnan(core.explained_variance(returns, torch.ones(1, 4), mask))


def test_eos_mask():
    eos = 9
    ids = torch.tensor([[9, 1, 2, 3], [1, 9, 2, 3], [1, 2, 3, 9], [1, 2, 3, 4]])
    assert core.first_true_indices(ids == eos).tolist() == [0, 1, 3, 4]
    mask, has_eos = core.response_mask_from_eos(ids, eos)
    assert mask.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, True, False]


def test_kl_controllers():
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, n_steps=64)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    before = ctl.value
    ctl.update(3.0, n_steps=64)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 64 / 10000))
    restored = core.AdaptiveKLController(1.0, 1.0, 1)
    restored.load_state_dict(ctl.state_dict())
    assert restored.state_dict() == ctl.state_dict()
    fixed = core.FixedKLController(0.2)
    fixed.update(100.0, 64)
    assert fixed.value == 0.2 and fixed.state_dict() == {"value": 0.2}
