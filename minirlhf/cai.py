"""Constitutional AI, supervised part (CAI-SL): answer a red-team prompt, critique the answer by a principle of the
constitution, revise it by the same principle.

Usage:
    from minirlhf.cai import critique_and_revise, run_cai
    rows = critique_and_revise(policy, tokenizer, critic, critic_tokenizer, prompts, constitution, settings, seed)
    rows[0]   # {"prompt", "initial", "principle", "critique", "revision"}
    result = run_cai(cfg, data_dir, sft_dir, out_dir)     # the stage: revisions.jsonl, gold of initial vs revised

Bai et al. 2022 ("Constitutional AI: Harmlessness from AI Feedback", Sec. 3.1): the helpful model answers each
red-team prompt; it is then asked, in the same conversation, for a critique by a principle drawn at random
(`CritiqueRequest: ... Critique:`), and for a revision by that principle's revision request (`RevisionRequest: ...
Revision:`); few-shot examples of the exchange come first. The revisions are the supervised data of CAI-SL. The
critic that writes critique and revision is configuration: the policy itself (self-critique, `cai.critic: policy`)
or another model (the packaged SmolLM2-135M-Instruct offline, any hub id online).

Red-team prompts: the embedded task's harmful requests (their gold score says whether the revision refuses), or
the HH rows' conversations (no gold: the samples are for people to read).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Callable

import torch

from minirlhf.config import PipelineConfig
from minirlhf.constitution import Constitution, Principle, constitution_path, load_constitution
from minirlhf.data.gold import gold_or_none, is_refusal
from minirlhf.data.task import read_jsonl
from minirlhf.generation import decode_responses, encode_prompts, sample_responses, sampling_config
from minirlhf.models import load_policy, max_positions, resolve_device
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output
from minirlhf.training import progress_bar

RESULTS = "revisions.jsonl"
STOP_MARKERS = ("\n\nHuman:", "\n\nCritiqueRequest:", "\n\nRevisionRequest:", "\n\nCritique:", "\n\nRevision:")


def exchange(prompt: str, response: str, principle: Principle, critique: str | None = None) -> str:
    """The conversation up to where the critic writes: its critique (critique None) or its revision."""
    text = (f"{prompt.rstrip()} {response.strip()}\n\nCritiqueRequest: {principle.critique_request}\n\nCritique:")
    if critique is None:
        return text
    return f"{text} {critique.strip()}\n\nRevisionRequest: {principle.revision_request}\n\nRevision:"


def few_shot_block(constitution: Constitution) -> str:
    """The constitution's worked examples, each a full exchange under the first principle, as context."""
    if not constitution.few_shot:
        return ""
    principle = constitution.principles[0]
    return "".join(exchange(e.prompt, e.response, principle, e.critique) + f" {e.revision.strip()}\n\n"
                   for e in constitution.few_shot)


def cut_at_markers(text: str) -> str:
    """A generation up to the first turn marker (the model would go on to write the next turn itself)."""
    cut = min((text.find(m) for m in STOP_MARKERS if m in text), default=len(text))
    return text[:cut].strip()


@torch.no_grad()
def generate(model, tokenizer, texts: list[str], max_new_tokens: int, temperature: float, max_prompt_length: int,
             batch_size: int = 16, on_batch: Callable[[int], object] | None = None) -> list[str]:
    """One sampled continuation per text, cut at the next turn marker."""
    device = next(model.parameters()).device
    config = sampling_config(tokenizer, temperature, max_new_tokens)
    # Context and answer within the model's positions (the demo's GPT-2 has 256): the context is cut from the left.
    positions = max_positions(model)
    if positions:
        max_prompt_length = max(1, min(max_prompt_length, positions - max_new_tokens))
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = encode_prompts(tokenizer, texts[i : i + batch_size], max_prompt_length, device)
        response_ids, response_mask, _ = sample_responses(model, tokenizer, ids, mask, config)
        out += [cut_at_markers(t) for t in decode_responses(tokenizer, response_ids, response_mask)]
        if on_batch is not None:  # a progress bar's update
            on_batch(len(response_ids))
    return out


def critique_and_revise(policy, tokenizer, critic, critic_tokenizer, prompts: list[str], constitution: Constitution,
                        max_new_tokens: int, temperature: float, max_prompt_length: int,
                        seed: int, on_batch: Callable[[int], object] | None = None) -> list[dict]:
    """For each prompt: the policy's answer, a principle drawn with `seed`, the critic's critique, its revision."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    principles = [constitution.choose(rng) for _ in prompts]
    context = few_shot_block(constitution)
    initial = generate(policy, tokenizer, prompts, max_new_tokens, temperature, max_prompt_length,
                       on_batch=on_batch)
    critiques = generate(critic, critic_tokenizer,
                         [context + exchange(p, r, pr) for p, r, pr in zip(prompts, initial, principles)],
                         max_new_tokens, temperature, max_prompt_length, on_batch=on_batch)
    revisions = generate(critic, critic_tokenizer,
                         [context + exchange(p, r, pr, c)
                          for p, r, pr, c in zip(prompts, initial, principles, critiques)],
                         max_new_tokens, temperature, max_prompt_length, on_batch=on_batch)
    return [{"prompt": p, "initial": r, "principle": pr.name, "critique": c, "revision": v}
            for p, r, pr, c, v in zip(prompts, initial, principles, critiques, revisions)]


def red_team_prompts(rows: list[dict], n: int) -> list[str]:
    """The harmful requests among PPO's prompts (embedded task), or every prompt (HH rows, all red-team)."""
    harmful = [r["prompt"] for r in rows if r.get("intent") == "harmful"]
    return (harmful or [r["prompt"] for r in rows])[:n]


def run_cai(cfg: PipelineConfig, data_dir: Path, sft_dir: Path, out_dir: Path,
            logger: MetricLogger | None = None) -> StageResult:
    """CAI-SL on the red-team prompts: revisions.jsonl, the samples in the store (policies cai_initial and
    cai_revision, the principle and critique in `extra`), and on the embedded task the gold reward and refusal
    rate of the initial answers against the revisions (cai/initial_gold, cai/revised_gold, ...)."""
    logger = logger or NullLogger()
    started = time.perf_counter()
    c = cfg.cai
    device = resolve_device(cfg.model.device)
    tokenizer, policy = load_policy(str(sft_dir))
    policy.to(device)
    critic_tokenizer, critic = (tokenizer, policy) if c.critic == "policy" else load_policy(c.critic)
    critic.to(device)
    constitution = load_constitution(constitution_path(c.constitution))
    prompts = red_team_prompts(read_jsonl(Path(data_dir) / "rl_prompts.jsonl"), c.n_prompts)
    bar = progress_bar("cai", 3 * len(prompts))  # answer, critique, revision
    rows = critique_and_revise(policy, tokenizer, critic, critic_tokenizer, prompts, constitution, c.max_new_tokens,
                               c.temperature, c.max_prompt_length, cfg.seed, bar.update)
    bar.close()
    metrics: dict[str, float] = {"cai/n_prompts": float(len(rows))}
    for stage_name, key in (("initial", "initial"), ("revised", "revision")):
        gold = [gold_or_none(r["prompt"], r[key]) for r in rows]
        known = [g for g in gold if g is not None]
        if known:
            metrics[f"cai/{stage_name}_gold"] = sum(known) / len(known)
        metrics[f"cai/{stage_name}_refusal_rate"] = sum(is_refusal(r[key]) for r in rows) / max(len(rows), 1)
        metrics[f"cai/{stage_name}_length"] = sum(len(r[key].split()) for r in rows) / max(len(rows), 1)
        # prompt_id: the row's index, which pairs an answer with its revision (store view v_cai_revisions)
        logger.log_samples([{"prompt_id": f"cai-{i}", "prompt": r["prompt"], "response": r[key], "gold_reward": g,
                             "principle": r["principle"], "critique": r["critique"]}  # -> samples.extra
                            for i, (r, g) in enumerate(zip(rows, gold))], step=0, policy=f"cai_{key}")
    logger.log_metrics(metrics, step=0)
    result = StageResult("cai", metrics=metrics)
    with stage_output(out_dir, result) as tmp:
        (tmp / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
        result.seconds = time.perf_counter() - started
    return result
