"""Sampling from a policy, shared by PPO's rollout, RLOO's scoring and the evaluation: one path, so the three
encode prompts, sample and decode identically.

Usage:
    from minirlhf.generation import encode_prompts, sample_responses, decode_responses, sampling_config
    query_ids, query_mask = encode_prompts(tokenizer, prompts, max_prompt_length=64, device=device)
    response_ids, response_mask, has_eos = sample_responses(
        policy, tokenizer, query_ids, query_mask, sampling_config(tokenizer, temperature=1.0, max_new_tokens=24))
    texts = decode_responses(tokenizer, response_ids, response_mask)
    logprobs = response_logprobs(policy, query_ids, query_mask, response_ids, response_mask, temperature=1.0)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import GenerationConfig

from minirlhf.ppo import core


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def encode_prompts(tokenizer, prompts: list[str], max_prompt_length: int,
                   device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of prompts, cut from the left to `max_prompt_length` and left-padded for generation."""
    encoded = [ids[-max_prompt_length:] for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    ids, mask = left_pad(encoded, tokenizer.pad_token_id)
    return ids.to(device), mask.to(device)


@torch.no_grad()
def sample_responses(policy, tokenizer, query_ids, query_mask,
                     generation_config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample responses; returns (response_ids padded after EOS, mask up to and including EOS, has_eos)."""
    policy.eval()
    with neutral_generation_defaults(policy):
        out = policy.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=generation_config)
    response_ids = out[:, query_ids.shape[1] :]
    response_mask, has_eos = core.response_mask_from_eos(response_ids, tokenizer.eos_token_id)
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    return response_ids, response_mask.float(), has_eos


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(ids[m > 0], skip_special_tokens=True) for ids, m in zip(response_ids, response_mask)]


# Every logits processor and decoding-mode field `generate` reads, at the value that turns it off. transformers 5.23
# fills each field left unset (None) from the checkpoint's generation_config.json (GenerationMixin.
# _prepare_generation_config: `generation_config.update(**self.generation_config.to_dict(), defaults_only=True)`),
# so a checkpoint saying repetition_penalty=1.5 or no_repeat_ngram_size=2 would silently change the sampling
# distribution away from softmax(logits / temperature), the one PPO recomputes its logprobs from.
NEUTRAL_SAMPLING = dict(
    do_sample=True, num_beams=1, num_return_sequences=1, top_k=0, top_p=1.0, typical_p=1.0, epsilon_cutoff=0.0,
    eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0, min_new_tokens=0, guidance_scale=1.0, renormalize_logits=False,
    remove_invalid_values=False,
)  # min_new_tokens=0 also sets min_length to the prompt's length (both set: transformers warns and uses min_new_tokens)


def sampling_config(tokenizer, temperature: float, max_new_tokens: int) -> GenerationConfig:
    """Pure sampling at `temperature` (no top-k/top-p, no penalties), as PPO's policy-gradient assumes. Fields
    whose only neutral value is None (bad_words_ids, suppress_tokens, forced_eos_token_id, min_p, stop_strings,
    ...) cannot be pinned here: `sample_responses` generates under `neutral_generation_defaults` for those."""
    return GenerationConfig(**NEUTRAL_SAMPLING, temperature=temperature, max_new_tokens=max_new_tokens,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


@contextmanager
def neutral_generation_defaults(model: torch.nn.Module) -> Iterator[None]:
    """Inside, `model.generate` sees an empty `generation_config` (all None) in place of the checkpoint's, so the
    config passed to `generate` is merged with transformers' global defaults only (see NEUTRAL_SAMPLING for why).
    Swaps it on every module that owns one (the transformers model under a peft wrapper, which forwards to it)."""
    owners = [m for m in model.modules() if isinstance(vars(m).get("generation_config"), GenerationConfig)]
    saved = [m.generation_config for m in owners]
    try:
        for m in owners:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, config in zip(owners, saved):
            m.generation_config = config


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` uses them: the first real token is position 0."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def response_logits(model, query_ids, query_mask, response_ids, response_mask, temperature: float,
                    hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits over the response tokens, divided by the sampling temperature (as `generate` scaled them), and the
    last hidden states at the same positions if asked. (batch, resp_len, vocab), (batch, resp_len, hidden)."""
    input_ids = torch.cat([query_ids, response_ids], 1)
    attention_mask = torch.cat([query_mask, (response_mask > 0).long()], 1)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from(attention_mask),
                output_hidden_states=hidden)
    q = query_ids.shape[1]
    logits = out.logits[:, q - 1 : -1] / temperature
    return logits, (out.hidden_states[-1][:, q - 1 : -1] if hidden else None)


@torch.no_grad()
def sequence_logprob(model, query_ids, query_mask, response_ids, response_mask, temperature: float) -> torch.Tensor:
    """sum_t log pi(y_t | x, y_<t) over each response's real tokens. (batch,)"""
    logits, _ = response_logits(model, query_ids, query_mask, response_ids, response_mask, temperature)
    return core.masked_sum(core.logprobs_from_logits(logits, response_ids), response_mask, dim=1)
