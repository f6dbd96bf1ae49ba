"""How a reward model reads text: the one scoring function of the project, and fitting pairs to its length.

Usage:
    from minirlhf.scoring import score_texts, fit_to_length
    scores = score_texts(model, tokenizer, prompts, responses)           # (batch,) exactly as in training
    rows, n_truncated, n_dropped = fit_to_length(pairs, tokenizer, 128)  # prompts cut from the left to fit
    ensemble = Ensemble.load(ensemble_dir, proxy_stats, 128)            # the ensemble stage's members, for PPO

`score_texts` is used by the reward stage's evaluation, PPO, RLOO and the evaluation stage: it scores
`prompt + response + EOS`, because RewardTrainer appends EOS to every text it trains on. Scoring without
the EOS skews the scores (seen with TRL 1.16: about -1.1..-2.2 instead of +0.88 for the same text).
Its own module, apart from the reward stage, so that editing the reward stage's training code recomputes the
reward model only, not every stage that scores with one (minirlhf.pipeline.STAGES code lists).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from minirlhf.models import load_reward_model

# The ensemble stage's output (minirlhf/ensemble.py): a folder per model and members.json with each one's statistics.
MEMBERS_FILE = "members.json"  # [{"name": "member-1", "seed": 1000, "score_mean": ..., "score_std": ...}, ...]
HELDOUT = "heldout"


def scoring_batches(tokenizer, prompts: list[str], responses: list[str], batch_size: int, max_length: int,
                    device) -> Iterator[dict[str, torch.Tensor]]:
    """`prompt + response + EOS` tokenised as RewardTrainer saw them, in batches on `device`; too-long texts cut from
    the left, keeping the end where the score is read."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [p + r + tokenizer.eos_token
                     for p, r in zip(prompts[i : i + batch_size], responses[i : i + batch_size])]
            # add_special_tokens as TRL tokenizes (`tokenizer(text=...)`): [CLS]...[SEP] for BERT-like backbones,
            # nothing for GPT-2.
            batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            yield {k: v.to(device) for k, v in batch.items()}
    finally:
        tokenizer.truncation_side = side


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 64,
                max_length: int = 512) -> torch.Tensor:
    """Reward-model scores of `prompt + response + EOS`, as RewardTrainer trained them. (batch,) float32."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        scores = [model(**batch).logits[:, 0].float().cpu()
                  for batch in scoring_batches(tokenizer, prompts, responses, batch_size, max_length, device)]
    finally:
        model.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0)


def fit_to_length(rows: list[dict], tokenizer, max_length: int, keep_head: int = 0) -> tuple[list[dict], int, int]:
    """Make every pair fit `max_length` tokens (with EOS) by cutting its prompt from the left, so long
    dialogues keep their last turns instead of being dropped by RewardTrainer's length filter. `keep_head` > 0
    keeps that many tokens of the prompt's start too, joined to its end by " ... " (on HH-RLHF the harmful request
    is often the first turn, which a cut from the left drops). Pairs whose response alone is too long are dropped.
    Returns (rows, n_truncated, n_dropped)."""
    kept, truncated, dropped = [], 0, 0
    budget = max_length - 3  # room for EOS and a backbone's own special tokens ([CLS], [SEP])
    for row in rows:
        response_len = max(len(tokenizer(row[k], add_special_tokens=False)["input_ids"])
                           for k in ("chosen", "rejected"))
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        if response_len >= budget:
            dropped += 1
            continue
        if len(prompt_ids) + response_len > budget:
            row = {**row, "prompt": cut_prompt(prompt_ids, budget - response_len, keep_head, tokenizer)}
            truncated += 1
        kept.append(row)
    return kept, truncated, dropped


def cut_prompt(prompt_ids: list[int], room: int, keep_head: int, tokenizer) -> str:
    """A prompt of `prompt_ids` in about `room` tokens: its last `room` tokens, or with `keep_head` (when `room`
    holds twice that: the end, which the response answers, matters more), its first `keep_head` tokens, " ... ",
    and as many of its last tokens as still fit."""
    head = keep_head if room >= 2 * keep_head else 0
    if head <= 0:
        return tokenizer.decode(prompt_ids[len(prompt_ids) - room :])
    gap = " ... "
    tail = room - head - len(tokenizer(gap, add_special_tokens=False)["input_ids"]) - 2  # 2: re-tokenising slack
    return tokenizer.decode(prompt_ids[:head]) + gap + tokenizer.decode(prompt_ids[len(prompt_ids) - max(tail, 0) :])


# ---- the reward-model ensemble, as PPO scores with it (trained by minirlhf/ensemble.py) --------------------------
@dataclass
class ScoredModel:
    model: torch.nn.Module
    tokenizer: object
    mean: float
    std: float

    def z(self, prompts: list[str], responses: list[str], max_length: int) -> torch.Tensor:
        scores = score_texts(self.model, self.tokenizer, prompts, responses, max_length=max_length)
        return (scores.cpu() - self.mean) / max(self.std, 1e-6)


@dataclass
class Ensemble:
    """The members beside the proxy and the held-out model, loaded for scoring; scores standardised per model."""

    members: list[ScoredModel]  # the further members (the proxy is scored by PPO already)
    heldout: ScoredModel | None
    proxy_mean: float
    proxy_std: float
    max_length: int

    @classmethod
    def load(cls, ensemble_dir: Path, proxy_stats: dict[str, float], max_length: int,
             device: torch.device | str = "cpu") -> "Ensemble":
        def scored(path: Path, stats: dict) -> ScoredModel:
            tokenizer, model = load_reward_model(str(path))
            return ScoredModel(model.to(device).eval().requires_grad_(False), tokenizer, stats["score_mean"],
                               stats["score_std"])

        listed = json.loads((Path(ensemble_dir) / MEMBERS_FILE).read_text())
        members = [scored(Path(ensemble_dir) / m["name"], m) for m in listed if m["name"] != HELDOUT]
        heldout = [scored(Path(ensemble_dir) / m["name"], m) for m in listed if m["name"] == HELDOUT]
        return cls(members, heldout[0] if heldout else None, proxy_stats["score_mean"], proxy_stats["score_std"],
                   max_length)

    @torch.no_grad()
    def member_scores(self, prompts: list[str], responses: list[str], proxy_scores: torch.Tensor) -> torch.Tensor:
        """(k, batch) standardised scores, the proxy's (from `proxy_scores`) first."""
        proxy_z = (proxy_scores.detach().cpu() - self.proxy_mean) / max(self.proxy_std, 1e-6)
        return torch.stack([proxy_z] + [m.z(prompts, responses, self.max_length) for m in self.members])

    @torch.no_grad()
    def heldout_scores(self, prompts: list[str], responses: list[str]) -> torch.Tensor | None:
        return None if self.heldout is None else self.heldout.z(prompts, responses, self.max_length)


def conservative_reward(member_z: torch.Tensor, kind: str, uncertainty_coef: float, proxy_mean: float,
                        proxy_std: float) -> torch.Tensor:
    """Coste et al. 2024: the ensemble's mean - lambda * spread (uncertainty-weighted) or its worst member
    (worst-case), over standardised scores (k, batch), mapped back to the proxy's units."""
    if kind == "ensemble_mean_minus_std":
        z = member_z.mean(0) - uncertainty_coef * member_z.std(0, correction=0)
    elif kind == "ensemble_min":
        z = member_z.min(0).values
    else:
        raise ValueError(f"unknown conservative reward {kind!r}")
    return proxy_mean + proxy_std * z
