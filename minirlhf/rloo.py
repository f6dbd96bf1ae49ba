"""The RLOO baseline: TRL's RLOOTrainer on PPO's prompts, rewarded by the same reward model through the same
scoring function, starting from and anchored to SFT.

Usage:
    from minirlhf.rloo import run_rloo
    result = run_rloo(cfg, data_dir, sft_dir, reward_dir, out_dir, logger)   # StageResult with rloo/* metrics
    result.metrics["rloo/reward"], result.metrics["rloo/gold_reward"]

RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs") samples k = `rloo.num_generations` responses per prompt, scores each with
r = RM(x, y) - beta * sum_t log(pi(y_t) / pi_sft(y_t)), and uses the mean r of the other k - 1 samples as the
baseline of each: REINFORCE with a leave-one-out baseline, no value model, no GAE.

The reward is a Python callable around `minirlhf.reward.score_texts`, the one scoring function PPO and the
evaluation use: it scores `prompt + response + EOS` as RewardTrainer trained the model. (Given the sequence
classifier itself, TRL would score the text without EOS: skewed scores, see NOTES.md "EOS trap".) A response
that stops without EOS gets `rloo.missing_eos_penalty` added to its score, as `ppo.missing_eos_penalty` in PPO.

Metrics, per step (`rloo/<name>` as TRL logs them): rloo/reward (mean of the penalised score, before KL),
rloo/kl (per token), rloo/loss, rloo/entropy, rloo/completions/mean_length, ...; ours, from the reward
function: rloo/proxy_reward (the reward model's score), rloo/gold_reward (gold annotator, embedded task),
rloo/eos_rate. Summary: the last step's values plus rloo/steps, rloo/seconds.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from datasets import Dataset
from transformers import set_seed
from trl import RLOOConfig, RLOOTrainer

from minirlhf.config import PipelineConfig, method_seed
from minirlhf.data.gold import gold_or_none
from minirlhf.data.task import read_jsonl
from minirlhf.models import load_policy, load_reward_model, lora_config, resolve_device
from minirlhf.scoring import score_texts
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output
from minirlhf.training import LogToStore, last_logged, train_and_save, trainer_common_args

SUMMARY = ("reward", "proxy_reward", "gold_reward", "eos_rate", "kl", "loss", "entropy", "completions/mean_length")


def reward_function(reward_model, rm_tokenizer, eos_token_id: int, missing_eos_penalty: float | None,
                    logger: MetricLogger, sample_every: int, policy: str = "rloo") -> Callable[..., list[float]]:
    """A reward function as RLOOTrainer and GRPOTrainer call it: f(prompts, completions, completion_ids, **kw) ->
    one float each; samples land in the store under `policy`."""

    def penalised_score(prompts: list[str], completions: list[str], completion_ids: list[list[int]], intent=None,
                        log_metric=None, trainer_state=None, **kwargs) -> list[float]:
        scores = score_texts(reward_model, rm_tokenizer, prompts, completions)  # (batch,) with EOS, as trained
        # TRL cuts each completion after its first EOS: a completion has EOS iff it ends with it.
        has_eos = torch.tensor([bool(ids) and ids[-1] == eos_token_id for ids in completion_ids])  # (batch,)
        rewards = scores if missing_eos_penalty is None else torch.where(has_eos, scores, scores + missing_eos_penalty)
        gold = [gold_or_none(p, c) for p, c in zip(prompts, completions)]
        if log_metric is not None:  # TRL averages these per step and logs them with its own (-> rloo/<name>)
            log_metric("proxy_reward", float(scores.mean()))
            log_metric("eos_rate", float(has_eos.float().mean()))
            known = [g for g in gold if g is not None]
            if known:
                log_metric("gold_reward", sum(known) / len(known))
        step = trainer_state.global_step + 1 if trainer_state is not None else 0  # the step these samples train
        if step == 1 or step % sample_every == 0:
            intents = intent or [""] * len(prompts)  # the dataset's extra columns come as keyword lists
            logger.log_samples([{"prompt": p, "response": c, "proxy_reward": float(s), "gold_reward": g, "intent": i}
                                for p, c, s, g, i in list(zip(prompts, completions, scores.tolist(), gold,
                                                              intents))[:4]],
                               step=step, policy=policy)
        return rewards.tolist()

    return penalised_score


def truncate_prompts(prompts: list[str], tokenizer, max_prompt_length: int) -> list[str]:
    """Cut prompts to their last `max_prompt_length` tokens, as PPO's rollout does (RLOOTrainer does not cut)."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return [p if len(i) <= max_prompt_length else tokenizer.decode(i[-max_prompt_length:])
            for p, i in zip(prompts, ids)]


def group_args(section, seed: int, output_dir: Path) -> dict:
    """The TRL arguments RLOO and GRPO share (section: cfg.rloo or cfg.grpo)."""
    r = section
    # The TRL arguments every stage shares (offline, CPU/GPU, no checkpoints, no gradient checkpointing); RLOO and
    # GRPO count optimiser steps, not epochs, and have no max_length (prompts are cut above, responses by length).
    shared = trainer_common_args(SimpleNamespace(learning_rate=r.learning_rate, num_train_epochs=1, max_steps=r.steps,
                                                 batch_size=r.batch_size, warmup_ratio=r.warmup_ratio,
                                                 weight_decay=r.weight_decay,
                                                 logging_steps=1, max_length=None), seed, output_dir)
    del shared["max_length"]
    return dict(
        **shared,
        num_generations=r.num_generations,
        beta=r.beta,
        num_iterations=r.num_iterations,
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        top_k=0, top_p=1.0,  # pure sampling, as PPO's rollout: the policy gradient assumes it
        max_grad_norm=r.max_grad_norm,
        disable_dropout=True,
    )


def rloo_args(cfg: PipelineConfig, output_dir: Path) -> RLOOConfig:
    return RLOOConfig(**group_args(cfg.rloo, method_seed(cfg, "rloo"), output_dir))


def run_rloo(cfg: PipelineConfig, data_dir: Path, sft_dir: Path, reward_dir: Path, out_dir: Path,
             logger: MetricLogger | None = None) -> StageResult:
    return run_group_baseline("rloo", RLOOTrainer, rloo_args, cfg, data_dir, sft_dir, reward_dir, out_dir, logger)


def run_group_baseline(name: str, trainer_class, make_args: Callable[[PipelineConfig, Path], Any],
                       cfg: PipelineConfig, data_dir: Path, sft_dir: Path, reward_dir: Path, out_dir: Path,
                       logger: MetricLogger | None = None) -> StageResult:
    """A TRL group-sampling trainer (RLOOTrainer, GRPOTrainer) on PPO's prompts, from SFT, rewarded through
    score_texts; metrics as `<name>/<metric>`."""
    logger = logger or NullLogger()
    section = getattr(cfg, name)
    started = time.perf_counter()
    set_seed(method_seed(cfg, name))
    tokenizer, policy = load_policy(str(sft_dir))  # the trainer loads the SFT reference itself, from this path
    rm_tokenizer, reward_model = load_reward_model(str(reward_dir))
    reward_model.to(resolve_device(cfg.model.device)).eval().requires_grad_(False)
    rows = read_jsonl(Path(data_dir) / "rl_prompts.jsonl")  # PPO's prompts
    prompts = truncate_prompts([r["prompt"] for r in rows], tokenizer, cfg.model.max_prompt_length)
    dataset = Dataset.from_list([{"prompt": p, "intent": r.get("intent", "")} for p, r in zip(prompts, rows)])
    result = StageResult(name, "", "")
    with stage_output(out_dir, result) as tmp:
        trainer = trainer_class(
            model=policy,
            reward_funcs=reward_function(reward_model, rm_tokenizer, tokenizer.eos_token_id,
                                         section.missing_eos_penalty, logger, section.sample_every, name),
            args=make_args(cfg, tmp / "trainer"),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[LogToStore(name + "/{}", logger, result.history)],
            peft_config=lora_config(cfg.model.lora, "CAUSAL_LM"),  # None: full fine-tuning
        )
        output, trainable, _ = train_and_save(trainer, tokenizer, tmp)  # LoRA merged: a plain checkpoint
        result.metrics = {f"{name}/{m}": last_logged(result.history, f"{name}/{m}") for m in SUMMARY}
        result.metrics = {k: v for k, v in result.metrics.items() if v is not None}
        result.metrics |= {
            f"{name}/train_loss_mean": float(output.training_loss),
            f"{name}/steps": float(output.global_step),
            f"{name}/trainable_params": float(trainable),
        }
        result.seconds = time.perf_counter() - started
        result.step = int(output.global_step)
        result.metrics[f"{name}/seconds"] = result.seconds
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
    return result
