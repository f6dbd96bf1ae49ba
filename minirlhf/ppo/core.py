"""The pure math of PPO for language models: masked statistics, log-probs and KL estimators, reward
shaping, GAE, the clipped losses, and the KL-coefficient controllers. No models, no I/O, no state but the
controllers': every function is tested against a naive reference in tests/test_ppo_core.py.

The trainer (`trainer.py`) uses it in the paper's order:

    mask, has_eos = response_mask_from_eos(response_ids, eos_token_id)       # after sampling
    logprobs = logprobs_from_logits(logits, response_ids)                   # policy and reference
    rewards, non_score_rewards, kl = shape_rewards(scores, logprobs, ref_logprobs, mask, kl_ctl.value, ...)
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    advantages = masked_whiten(advantages, mask)
    pg_loss, pg_stats = policy_loss(new_logprobs, logprobs, advantages, mask, cliprange)   # per minibatch
    vf_loss, vf_stats = value_loss(new_values, values, returns, mask, cliprange_value)
    kl_ctl.update(mean_kl, batch_size)                                       # once per rollout

Sources: Schulman et al. 2016 (GAE) and 2017 (PPO); Ziegler et al. 2019, "Fine-Tuning Language Models
from Human Preferences" (per-token KL penalty, adaptive controller); Huang et al. 2024, "The N+
Implementation Details of RLHF with PPO" (masking, whitening, EOS penalty, approx-KL), as in CleanRL.

Conventions: response tensors are (batch, resp_len); `mask` (float or bool) is 1 on real response tokens,
up to and including EOS, and 0 on the padding after it. Masked statistics read only masked positions:
whatever padding holds (even NaN) leaves their values unchanged, and finite padding gets zero gradient.
Every per-token output is 0 on padding. Losses are means over real tokens of the whole (mini)batch.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F

KLKind = Literal["k1", "k3"]
# Sums a tensor over the ranks of a data-parallel run (minirlhf.distributed.all_reduce); None: one process.
Reduce = Callable[[torch.Tensor], torch.Tensor]


# ---- masked statistics -----------------------------------------------------------------------------
def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x over masked positions (all of them, or along `dim`)."""
    kept = torch.where(mask.bool(), x, 0.0)  # where, not x * mask: NaN/inf in padding stay out
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, reduce: Reduce | None = None,
                count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of x over masked positions; 0 (never NaN) where there are none.
    Data parallel (minirlhf.distributed): `reduce` sums the sum and the count over every rank's share first, so
    each rank gets the mean of the whole batch; `count` replaces the denominator (the real tokens of every rank)
    for a loss whose per-rank gradients are summed."""
    if count is None:
        count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    total = masked_sum(x, mask, dim)
    if reduce is not None:
        total, count = reduce(total), reduce(count)
    return total / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, reduce: Reduce | None = None
               ) -> torch.Tensor:
    """Variance of x over all masked positions (of every rank's share with `reduce`). Bessel's correction
    (unbiased) needs n >= 2 masked tokens; with fewer the biased value (0 or 0/0 -> 0) is returned rather than inf."""
    mean = masked_mean(x, mask, reduce=reduce)
    var = masked_mean((x - mean) ** 2, mask, reduce=reduce)
    n = mask.bool().sum() if reduce is None else reduce(mask.bool().sum())
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, reduce: Reduce | None = None
                  ) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8), mean and var over masked positions only (of the whole batch, every rank's
    share, with `reduce`); masked-out positions are returned as 0. shift_mean=False adds the mean back (rescale
    only), as TRL does for reward whitening."""
    mean, var = masked_mean(x, mask, reduce=reduce), masked_var(x, mask, reduce=reduce)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)  # (batch, resp_len)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


# ---- log-probabilities, entropy, KL -----------------------------------------------------------------
def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label_t) at each position: logits (batch, seq, vocab), labels (batch, seq) -> (batch, seq).
    Computed in float32 whatever the logits' dtype (bf16 log-softmax is too coarse for PPO ratios)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (batch, seq, vocab)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (batch, seq)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy -sum_v p_v log p_v of the next-token distribution: (batch, seq, vocab) -> (batch, seq)."""
    probs = F.softmax(logits.float(), dim=-1)  # (batch, seq, vocab)
    return torch.special.entr(probs).sum(-1)  # entr(0) = 0, so banned (-inf) logits are safe


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(y) - log pi_ref(y): unbiased for KL(pi || pi_ref) on samples y ~ pi, can be negative
    per token (Ziegler et al. 2019 use it as the per-token penalty)."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = pi_ref(y) / pi(y) (Schulman 2020, "Approximating KL divergence"):
    unbiased for KL(pi || pi_ref) on samples of pi, and >= 0 per token, with lower variance than k1."""
    log_ratio = ref_logprobs - logprobs  # log r
    return torch.expm1(log_ratio) - log_ratio


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLKind = "k1") -> torch.Tensor:
    """Per-token KL estimate of the chosen kind (config `kl_estimator`)."""
    if kind == "k1":
        return kl_k1(logprobs, ref_logprobs)
    if kind == "k3":
        return kl_k3(logprobs, ref_logprobs)
    raise ValueError(f"unknown KL estimator {kind!r}: use 'k1' or 'k3'")


# ---- rewards and advantages -------------------------------------------------------------------------
def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, mask.sum(1) - 1: (batch, resp_len) -> (batch,).
    A row with no real token gets -1; callers must not index with it (see shape_rewards)."""
    return mask.bool().sum(1) - 1


def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_kind: KLKind = "k1",
    missing_eos_penalty: float | None = None,
    has_eos: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards (Ziegler et al. 2019): -kl_coef * KL at every real token, plus the reward-model
    score on the last real token. Rows without EOS first get `missing_eos_penalty` added to their score
    (a negative number, e.g. -1.0; Huang et al. 2024). A row with no real token gets no score at all: it
    has no action to credit, and every output stays 0 on padding.
    Returns (rewards, non_score_rewards, kl), each (batch, resp_len) and 0 on padding."""
    kl = torch.where(mask.bool(), kl_penalty(logprobs, ref_logprobs, kl_kind), 0.0)  # (batch, resp_len)
    non_score_rewards = -kl_coef * kl  # (batch, resp_len)
    scores = scores.to(non_score_rewards.dtype)  # (batch,)
    if missing_eos_penalty is not None:
        if has_eos is None:
            raise ValueError("missing_eos_penalty is set but has_eos is None: pass has_eos from response_mask_from_eos")
        scores = torch.where(has_eos.bool(), scores, scores + missing_eos_penalty)
    last = last_token_index(mask)  # (batch,)
    rows = torch.arange(len(scores), device=scores.device)
    score_at_last = torch.zeros_like(non_score_rewards)
    score_at_last[rows, last.clamp(min=0)] = torch.where(last >= 0, scores, 0.0)  # empty rows: nothing
    return non_score_rewards + score_at_last, non_score_rewards, kl


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), as the reverse loop over time:
    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1}.
    The value after the last real token is 0 (the episode ends there); padding gets 0 advantage and return.
    Returns (advantages, returns = advantages + values), both (batch, resp_len)."""
    real = mask.bool()
    rewards = torch.where(real, rewards, 0.0)  # (batch, resp_len)
    values = torch.where(real, values, 0.0)  # (batch, resp_len): V = 0 on padding = terminal value
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])  # (batch,)
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(next_advantage)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = torch.where(real[:, t], delta + gamma * lam * next_advantage, 0.0)
        advantages[:, t] = next_advantage
    return advantages, torch.where(real, advantages + values, 0.0)


# ---- losses -----------------------------------------------------------------------------------------
def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float, count: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017), averaged over real tokens:
    loss = mean max(-A * r, -A * clip(r, 1 - eps, 1 + eps)), r = pi / pi_old.
    Gradients flow through `logprobs` only (old_logprobs and advantages are detached here).
    Stats (detached): approxkl = 0.5 * mean (log r)^2 (Huang et al. 2024), clipfrac = share of real tokens
    where the clipped term was the max, ratio_mean / ratio_max over real tokens (1.0 if there are none).
    `count`: the minibatch's real tokens over every rank (data parallel): loss and means are this rank's share."""
    real = mask.bool()
    log_ratio = torch.where(real, logprobs - old_logprobs.detach(), 0.0)  # (batch, resp_len), 0 on padding
    ratio = torch.exp(log_ratio)  # (batch, resp_len)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask, count=count)
    with torch.no_grad():
        stats = {
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask, count=count),
            "clipfrac": masked_mean((clipped > unclipped).float(), mask, count=count),
            "ratio_mean": masked_mean(ratio, mask, count=count) if real.any() else ratio.new_ones(()),
            "ratio_max": ratio[real].max() if real.any() else ratio.new_ones(()),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float, count: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (Huang et al. 2024, as in OpenAI's lm-human-preferences):
    0.5 * mean max((v - R)^2, (clip(v, v_old - eps, v_old + eps) - R)^2) over real tokens.
    Gradients flow through `values` only. Stats: clipfrac = share of real tokens where the clipped term won.
    `count` as in policy_loss."""
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2  # (batch, resp_len)
    loss_clipped = (clipped_values - returns) ** 2  # (batch, resp_len)
    loss = 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask, count=count)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), mask, count=count)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       reduce: Reduce | None = None) -> float:
    """1 - Var(R - V) / Var(R) over real tokens: 1 for a perfect critic, <= 0 for one no better than a
    constant. NaN when the returns have zero variance (including no real tokens): the ratio is undefined."""
    var_returns = float(masked_var(returns, mask, unbiased=False, reduce=reduce))
    if var_returns == 0.0:
        return math.nan
    return 1.0 - float(masked_var(returns - values, mask, unbiased=False, reduce=reduce)) / var_returns


# ---- EOS handling -----------------------------------------------------------------------------------
def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row, or the row length if there is none: (batch, n) -> (batch,)."""
    n = bools.shape[-1]
    positions = torch.arange(n, device=bools.device).expand_as(bools)  # (batch, n)
    return torch.where(bools.bool(), positions, n).min(-1).values


def response_mask_from_eos(response_ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float mask (batch, resp_len), 1 up to and including the first EOS and 0 after it (all 1 for a row
    without EOS, which was cut at max length); and has_eos (batch,) bool."""
    first_eos = first_true_indices(response_ids == eos_token_id)  # (batch,)
    positions = torch.arange(response_ids.shape[1], device=response_ids.device)  # (resp_len,)
    mask = (positions.unsqueeze(0) <= first_eos.unsqueeze(1)).float()  # (batch, resp_len)
    return mask, first_eos < response_ids.shape[1]


# ---- KL controllers ---------------------------------------------------------------------------------
class FixedKLController:
    """A constant kl_coef, with the adaptive controller's interface."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019, section 2.2: e = clip(KL / target - 1, -0.2, 0.2), beta <- beta * (1 + e * n_steps
    / horizon). `current_kl` is the mean per-sequence KL of the rollout, `n_steps` its number of samples."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController needs target > 0 and horizon > 0, "
                             f"got target={target}, horizon={horizon}")
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl={current_kl} is not finite: the KL controller cannot adapt to it")
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), int(state["horizon"])
