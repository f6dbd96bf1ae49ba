"""The pure math of PPO for language models: masked statistics, KL estimators, reward shaping, GAE,
clipped losses, and KL controllers. No models, no I/O: every function is tested against a naive reference.

The trainer (`trainer.py`) calls them in the paper's order: `shape_rewards` (per-token -beta*KL plus the
reward-model score at the last token), `compute_gae`, `masked_whiten` on the advantages, then
`policy_loss` + `value_loss` per minibatch. Sources: Schulman et al. 2016 (GAE), 2017 (PPO);
Ziegler et al. 2019 (KL penalty, adaptive controller); Huang et al. 2024, "The N+ implementation details
of RLHF with PPO" (masking, whitening, EOS penalty, approx-KL).

Conventions: response tensors are (batch, resp_len); `mask` is 1.0 on real response tokens (up to and
including EOS) and 0.0 on padding after it. Masked-out positions of every per-token output are 0.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


# ---- masked statistics -----------------------------------------------------------------------------
def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over masked positions (0 where a row has none, never NaN)."""
    mask = mask.to(x.dtype)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1.0) if dim is not None else masked_sum(x, mask) / mask.sum().clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked positions; masked-out positions are returned as 0.
    With shift_mean=False the mean is added back (scale only), as for reward whitening."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


# ---- log-probabilities, entropy, KL -----------------------------------------------------------------
def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position: (batch, seq, vocab), (batch, seq) -> (batch, seq)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical at each position: (batch, seq, vocab) -> (batch, seq)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref: unbiased for KL(pi || pi_ref) on samples of pi, can be negative."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = pi_ref / pi (Schulman, "Approximating KL divergence"): unbiased, >= 0."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: Literal["k1", "k3"] = "k1") -> torch.Tensor:
    if kind == "k1":
        return kl_k1(logprobs, ref_logprobs)
    if kind == "k3":
        return kl_k3(logprobs, ref_logprobs)
    raise ValueError(f"unknown KL estimator {kind!r}: use 'k1' or 'k3'")


# ---- rewards and advantages -------------------------------------------------------------------------
def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token; 0 for a row with none (the score then sits at position 0)."""
    return (mask.sum(1).long() - 1).clamp(min=0)


def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_kind: Literal["k1", "k3"] = "k1",
    missing_eos_penalty: float | None = None,
    has_eos: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards (Ziegler et al. 2019): -kl_coef * KL at every response token, plus the reward-model
    score at the last real token. Rows without EOS get `missing_eos_penalty` (negative, e.g. -1.0) added to
    their score (Huang et al. 2024). Returns (rewards, non_score_rewards, kl), all (batch, resp_len)."""
    mask = mask.to(logprobs.dtype)
    kl = kl_penalty(logprobs, ref_logprobs, kl_kind) * mask
    non_score_rewards = -kl_coef * kl
    scores = scores.to(logprobs.dtype)
    if missing_eos_penalty is not None and has_eos is not None:
        scores = torch.where(has_eos.bool(), scores, scores + missing_eos_penalty)
    rewards = non_score_rewards.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards, non_score_rewards, kl


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over padded responses. The value after the
    last real token is 0 (the episode ends); padded positions get 0 advantage. Returns (advantages, returns)."""
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        last_gae = last_gae * mask[:, t]  # padding carries nothing back
        advantages[:, t] = last_gae
    returns = advantages + values
    return advantages * mask, returns * mask


# ---- losses -----------------------------------------------------------------------------------------
def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (Schulman et al. 2017): mean over tokens of max(-A r, -A clip(r, 1-eps, 1+eps))."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": (ratio * mask).max() if mask.any() else torch.tensor(1.0),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * mean of max((v - R)^2, (clip(v, v_old +- eps) - R)^2)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), mask)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens; NaN when the returns have no variance."""
    var_returns = masked_var(returns, mask, unbiased=False)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns)


# ---- EOS handling -----------------------------------------------------------------------------------
def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row, or the row length if there is none. (batch, n) -> (batch,)."""
    n = bools.shape[-1]
    positions = torch.arange(n, device=bools.device).expand_as(bools)
    return torch.where(bools.bool(), positions, torch.full_like(positions, n)).min(-1).values


def response_mask_from_eos(response_ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask that is 1 up to and including the first EOS and 0 after; and whether each row has an EOS."""
    first_eos = first_true_indices(response_ids == eos_token_id)  # (batch,)
    positions = torch.arange(response_ids.shape[1], device=response_ids.device).unsqueeze(0)
    mask = (positions <= first_eos.unsqueeze(1)).float()
    return mask, first_eos < response_ids.shape[1]


# ---- KL controllers ---------------------------------------------------------------------------------
class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": float(self.value)}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019, section 2.2: beta <- beta * (1 + K_beta * e), e = clip(KL / target - 1, +-0.2),
    with K_beta = n_steps / horizon."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": float(self.value), "target": float(self.target), "horizon": int(self.horizon)}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), int(state["horizon"])
