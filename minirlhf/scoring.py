"""How a reward model reads text: the one scoring function of the project, and fitting pairs to its length.

Usage:
    from minirlhf.scoring import score_texts, fit_to_length
    scores = score_texts(model, tokenizer, prompts, responses)           # (batch,) exactly as in training
    rows, n_truncated, n_dropped = fit_to_length(pairs, tokenizer, 128)  # prompts cut from the left to fit

`score_texts` is used by the reward stage's evaluation, PPO, RLOO and the evaluation stage: it scores
`prompt + response + EOS`, because RewardTrainer appends EOS to every text it trains on. Scoring without
the EOS skews the scores (seen with TRL 1.16: about -1.1..-2.2 instead of +0.88 for the same text).
Its own module, apart from the reward stage, so that editing the reward stage's training code recomputes the
reward model only, not every stage that scores with one (minirlhf.pipeline.STAGES code lists).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 64,
                max_length: int = 512) -> torch.Tensor:
    """Reward-model scores of `prompt + response + EOS`, as RewardTrainer trained them. (batch,) float32.

    Too-long texts are cut from the left, keeping the end where the score is read."""
    was_training = model.training
    model.eval()
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    device = next(model.parameters()).device
    scores = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [p + r + tokenizer.eos_token
                     for p, r in zip(prompts[i : i + batch_size], responses[i : i + batch_size])]
            # add_special_tokens as TRL tokenizes (`tokenizer(text=...)`): [CLS]...[SEP] for BERT-like backbones,
            # nothing for GPT-2.
            batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            batch = {k: v.to(device) for k, v in batch.items()}
            scores.append(model(**batch).logits[:, 0].float().cpu())
    finally:
        tokenizer.truncation_side = side
        model.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0)


def fit_to_length(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int, int]:
    """Make every pair fit `max_length` tokens (with EOS) by cutting its prompt from the left, so long
    dialogues keep their last turns instead of being dropped by RewardTrainer's length filter.
    Pairs whose response alone is too long are dropped. Returns (rows, n_truncated, n_dropped)."""
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
            row = {**row, "prompt": tokenizer.decode(prompt_ids[len(prompt_ids) + response_len - budget :])}
            truncated += 1
        kept.append(row)
    return kept, truncated, dropped
