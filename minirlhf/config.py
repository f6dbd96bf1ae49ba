"""Pipeline configuration: one pydantic model per stage, gathered in `PipelineConfig`.

Usage:
    from minirlhf.config import load_config
    cfg = load_config("configs/demo.yaml", overrides=["ppo.kl_coef=0.02", "sft.num_train_epochs=2"])
    cfg.ppo.kl_coef  # 0.02

Config is data: every field has a default, a type and limits. An unknown key or a bad value fails at
load with `ConfigError`, which names the field path (`sft.learning_rate`) and, where the field is a
choice, the allowed values. A file that is no YAML mapping (binary, malformed, empty, a list) fails the same
way, naming the file. ConfigError is a `minirlhf.errors.UserError`: its message is one line. Field names follow
the papers (`kl_coef`, `cliprange`, `gamma`, `lam`) and carry through to variables, metric names and SQL columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from minirlhf.errors import UserError


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """What the policy is trained on: the embedded offline task (default) or HH-RLHF rows."""

    source: Literal["embedded", "hh"] = "embedded"
    seed: int = 0
    # Embedded task sizes (docs/TASK.md).
    n_sft: int = Field(2000, ge=10, description="SFT demonstrations")
    n_pairs_train: int = Field(2400, ge=10, description="preference pairs for reward-model training")
    n_pairs_test: int = Field(500, ge=10, description="held-out preference pairs")
    n_rl_prompts: int = Field(512, ge=1, description="prompts PPO samples from")
    n_eval_prompts: int = Field(200, ge=1, description="held-out prompts for evaluation")
    # Bradley-Terry label noise: P(a preferred over b) = sigmoid((gold_a - gold_b) / label_noise).
    label_noise: float = Field(0.25, gt=0, description="Bradley-Terry temperature of the simulated annotator")
    # The spurious feature: a filler phrase attached more often to the better answer of a pair, so the
    # preference data correlates it with "chosen" although the gold annotator mildly penalises it.
    filler_rate_better: float = Field(0.5, ge=0, le=1)
    filler_rate_worse: float = Field(0.15, ge=0, le=1)
    filler_rate_sft: float = Field(0.15, ge=0, le=1, description="filler rate in SFT demonstrations")
    # HH-RLHF source (data.source = "hh"): a local .jsonl(.gz) file/dir, or the hub id "Anthropic/hh-rlhf".
    hh_path: str | None = None
    hh_data_dir: str | None = "harmless-base"
    hh_split: str = "test"
    hh_n_train: int = Field(1500, ge=1, description="first N rows train, the rest are held out")
    hh_judge_rows: int = Field(0, ge=0, description="the last N of the hh_n_train training rows train only the judge "
                               "reward model (judge.reward_model): pairs no other stage sees; 0: none")
    hh_limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _hh_needs_path(self) -> "DataConfig":
        if self.source == "hh" and not self.hh_path:
            raise ValueError("data.source='hh' needs data.hh_path (a .jsonl/.jsonl.gz path or 'Anthropic/hh-rlhf')")
        if self.hh_judge_rows >= self.hh_n_train:
            raise ValueError(f"data.hh_judge_rows={self.hh_judge_rows} leaves no training rows of "
                             f"data.hh_n_train={self.hh_n_train}: set it below hh_n_train")
        return self


class TinyModelConfig(_Section):
    """A GPT-2 built from scratch, with a BPE tokenizer trained on the task corpus."""

    n_layer: int = Field(2, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=8)
    n_positions: int = Field(256, ge=16)
    vocab_size: int = Field(1024, ge=300, description="BPE vocabulary trained with `tokenizers`")
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class LoRAConfig(_Section):
    """LoRA adapters through `peft` (Hu et al. 2021) for SFT, the reward model and PPO. Each stage merges
    its adapters into the weights before saving, so every stage output is a plain checkpoint."""

    enabled: bool = False
    r: int = Field(16, ge=1, description="rank of the update W + B A")
    alpha: int = Field(32, ge=1, description="the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear",
                                            description="peft's target_modules: 'all-linear' or module names")


class ModelConfig(_Section):
    """Which models. `policy`: 'tiny' | 'smollm2' | a hub id ('gpt2') | a local directory.
    `reward_backbone`: 'sft' (start from the SFT checkpoint, as in Ouyang et al. 2022) | 'minilm' | hub id | dir.
    `device`: 'auto' picks CUDA when available (PPO and evaluation; the TRL trainers pick their own)."""

    policy: str = "tiny"
    gguf_file: str | None = None
    reward_backbone: str = "sft"
    tiny: TinyModelConfig = TinyModelConfig()
    max_prompt_length: int = Field(64, ge=4, description="tokens; longer prompts are cut from the left")
    trust_remote_code: bool = False
    lora: LoRAConfig = LoRAConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"


class _DataParallel(_Section):
    """What a TRL stage adds to run data parallel: N processes under torchrun (minirlhf.launch), accelerate sharing
    each batch of `batch_size` among them."""

    nproc: int = Field(1, ge=1, description="data-parallel processes (torchrun; gloo on CPU, nccl on GPUs), each "
                       "taking batch_size / nproc rows of every batch; 1: one process, no launcher")

    @model_validator(mode="after")
    def _ranks_divide_the_batch(self):
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of nproc ({self.nproc}): each "
                             "process takes an equal share of every batch")
        return self


class SFTConfig(_DataParallel):
    learning_rate: float = Field(4e-3, gt=0, le=1)
    num_train_epochs: float = Field(6, gt=0)
    max_steps: int = Field(-1, ge=-1, description="optimiser steps; -1: run num_train_epochs")
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(128, ge=8, description="prompt + completion tokens")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    logging_steps: int = Field(10, ge=1)


class RewardConfig(_DataParallel):
    labels: Literal["human", "ai"] = Field("human", description="train on the data's preference labels, or on the "
                                           "rlaif stage's AI labels (Constitutional AI's RLAIF; needs rlaif.enabled)")
    learning_rate: float = Field(3e-3, gt=0, le=1)
    # Demo (2026-12): 2 epochs reach 0.916 held-out accuracy against a 0.939 label ceiling (3 epochs: 0.930), 20 s less.
    num_train_epochs: float = Field(2, gt=0)
    max_steps: int = Field(-1, ge=-1, description="optimiser steps; -1: run num_train_epochs")
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(128, ge=8)
    keep_prompt_head: int = Field(0, ge=0, description="a dialogue cut to fit max_length keeps this many tokens of "
                                  "its start as well as its end (HH-RLHF: the request is often the first turn); "
                                  "0: cut from the left only")
    pooling: Literal["default", "response_mean"] = Field(
        "default", description="where the score is read: 'default' as the backbone does (GPT-2/Llama: the last "
        "token; BERT: the [CLS] pooler); 'response_mean' (BERT-family backbones): the mean of the tokens after the "
        "last reward.response_marker (minirlhf/pooling.py)")
    response_marker: str = Field("Assistant:", min_length=1, description="the text that opens the scored response "
                                 "(HH-RLHF: 'Assistant:'), for pooling: response_mean")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    logging_steps: int = Field(10, ge=1)
    # Eisenstein et al. 2023 / TRL: keeps scores centred near zero, which PPO's value function likes.
    center_rewards_coefficient: float | None = Field(0.01, ge=0)
    length_corr_coef: float = Field(0.0, ge=0, description="a length-debiased objective: adds this times "
                                    "|Pearson(margin, length difference)| over each batch's pairs to the loss "
                                    "(after ODIN, Chen et al. 2024); 0: the plain Bradley-Terry loss")
    score_stats_max_pairs: int | None = Field(500, ge=2, description="training pairs scored for reward/score_mean, "
                                              "reward/score_std (None: all; a big reward model on CPU: a few hundred)")


class PPOConfig(_Section):
    """Our PPO (minirlhf/ppo). Names as in Ziegler et al. 2019 and Huang et al. 2024."""

    # Demo (2026-12): gold reaches ~0.5 by step 10 of 60 and then hovers; 30 steps of 2 epochs each gave gold 0.668,
    # win rate 0.76 over SFT (60 steps of 4 epochs: 0.614, 0.71) in 35 % of the time.
    steps: int = Field(30, ge=1, description="PPO iterations (rollout + update)")
    batch_size: int = Field(64, ge=1, description="episodes per rollout")
    mini_batch_size: int = Field(16, ge=1)
    num_ppo_epochs: int = Field(2, ge=1, description="optimisation passes over each rollout")
    learning_rate: float = Field(3e-4, gt=0, le=1)
    max_new_tokens: int = Field(24, ge=1, description="max new tokens per response "
                                "(the one generation-length name: ppo, rloo, eval)")
    temperature: float = Field(1.0, gt=0)
    kl_coef: float = Field(0.2, ge=0, description="beta of the per-token KL penalty "
                           "(0.2 beats SFT on gold in the demo; 0.05 starts to over-optimise)")
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = False
    kl_target: float = Field(6.0, gt=0)
    kl_horizon: int = Field(10000, ge=1)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = Field(-1.0, le=0, description="added to the score of responses without EOS")
    value_model: Literal["separate", "head"] = "separate"
    max_grad_norm: float = Field(1.0, gt=0)
    # Instability guard: stop with PPOUnstable when crossed.
    max_kl: float = Field(50.0, gt=0, description="mean sequence KL above which the run is unstable")
    # approxkl, not the mean ratio: one rare sampled token can reach a ratio in the thousands in a healthy first
    # update (seen on the demo, 2026-12) and drag a minibatch's mean ratio over 10; approxkl stays near 0.2 there.
    max_approxkl: float = Field(1.0, gt=0, description="approxkl (0.5 * mean (log ratio)^2) of a minibatch "
                                "above which the update diverged")
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    sample_every: int = Field(10, ge=1, description="steps between sampled responses written to the store")
    lr_scale_on_retry: float = Field(0.5, gt=0, le=1)
    # The defence against reward hacking (minirlhf.hacking; Coste et al. 2024): optimise a conservative reward from
    # the ensemble instead of the proxy alone. Needs ensemble.enabled.
    reward: Literal["proxy", "ensemble_mean_minus_std", "ensemble_min"] = Field(
        "proxy", description="what PPO maximises: the proxy reward model, or the ensemble's mean - "
        "uncertainty_coef * spread, or its worst member (scores in the proxy's units)")
    uncertainty_coef: float = Field(1.0, ge=0, description="lambda of ensemble_mean_minus_std")
    seed: int | None = Field(None, description="the RL run's own seed (prompt order, sampling, init of the value "
                             "head); None: the top-level seed. Seeds PPO alone, reusing data, SFT and reward models")
    nproc: int = Field(1, ge=1, description="data-parallel processes (torch.distributed through torchrun: gloo on "
                       "CPU, nccl on GPUs), each rolling out batch_size / nproc episodes; 1: one process, no launcher")

    @model_validator(mode="after")
    def _minibatches_divide(self) -> "PPOConfig":
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size ({self.mini_batch_size})"
            )
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of nproc ({self.nproc}): each "
                             "process rolls out an equal share")
        return self


class DPOConfig(_DataParallel):
    """The DPO baseline (Rafailov et al. 2023) through TRL's DPOTrainer: the same preference pairs as the reward
    model, the SFT model as the reference, no reward model and no sampling."""

    enabled: bool = Field(True, description="train the DPO baseline and evaluate it beside PPO")
    seed: int | None = Field(None, description="this baseline's own seed (data order, sampling, LoRA init); None: "
                             "the top-level seed. Seeds it alone, reusing data, SFT and the reward model")
    beta: float = Field(0.1, gt=0, description="DPO's beta: strength of the implicit KL to the SFT reference")
    # Demo: 80 steps x 16 pairs (about half an epoch) beat SFT on gold; lr 2e-4 over-optimised (KL 16, gold at SFT's).
    learning_rate: float = Field(1e-4, gt=0, le=1)
    num_train_epochs: float = Field(1, gt=0)
    max_steps: int = Field(80, ge=-1, description="optimiser steps; -1: run num_train_epochs")
    batch_size: int = Field(16, ge=1, description="preference pairs per optimiser step")
    max_length: int = Field(128, ge=8, description="prompt + response tokens; longer prompts are cut from the left")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    logging_steps: int = Field(5, ge=1)


class RLOOConfig(_DataParallel):
    """The RLOO baseline (Ahmadian et al. 2024) through TRL's RLOOTrainer: k samples per prompt, each rewarded by
    the reward model (minirlhf.reward.score_texts, as PPO) minus beta * its sequence KL to the SFT model, with the
    mean reward of the other k-1 samples as its baseline; no value model."""

    enabled: bool = Field(True, description="train the RLOO baseline and evaluate it beside PPO")
    seed: int | None = Field(None, description="this baseline's own seed (data order, sampling, LoRA init); None: "
                             "the top-level seed. Seeds it alone, reusing data, SFT and the reward model")
    num_generations: int = Field(4, ge=2, description="k: samples per prompt (the leave-one-out baseline needs k >= 2)")
    beta: float = Field(0.05, ge=0, description="KL coefficient: reward - beta * sum_t log(pi/pi_sft)")
    learning_rate: float = Field(3e-4, gt=0, le=1)
    # Demo: gold reward of the samples levels off after ~10-20 steps; 40 steps doubled the KL for no more gold.
    steps: int = Field(20, ge=1, description="optimiser steps, one batch of samples each")
    batch_size: int = Field(64, ge=2, description="samples per step (batch_size / num_generations prompts)")
    num_iterations: int = Field(1, ge=1, description="mu: optimiser passes over each batch of samples")
    max_new_tokens: int = Field(24, ge=1, description="max new tokens per response (TRL: max_completion_length)")
    temperature: float = Field(1.0, gt=0)
    missing_eos_penalty: float | None = Field(-1.0, le=0, description="added to the score of responses without EOS "
                                              "(as ppo.missing_eos_penalty)")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    sample_every: int = Field(10, ge=1, description="steps between sampled responses written to the store")

    @model_validator(mode="after")
    def _groups_divide(self) -> "RLOOConfig":
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_generations ({self.num_generations}): "
                "every prompt's k samples share one batch"
            )
        return self


class GRPOConfig(RLOOConfig):
    """The GRPO baseline (Shao et al. 2024, "DeepSeekMath") through TRL's GRPOTrainer: k samples per prompt, each
    rewarded exactly as RLOO's (minirlhf.reward.score_texts, the missing-EOS penalty); the advantage of a sample
    is its reward minus the group's mean, divided by the group's std (`scale_rewards: group`), and the KL to SFT
    is a loss term (beta), not part of the reward. Off by default: the demo's time budget has no room for it;
    the comparison turns it on."""

    enabled: bool = Field(False, description="train the GRPO baseline and evaluate it beside PPO")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        "grpo", description="TRL's loss aggregation: 'grpo' averages per sequence, then over the batch (the paper)")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="divide advantages by the group's reward std (the paper), the batch's, or not at all")


class InterpretConfig(_Section):
    """What the reward model computes (minirlhf/interpret.py): linear probes per layer for the embedded task's
    features and leave-one-out token attributions; on data without gold (HH), attributions and the words it rewards
    and punishes most. Off by default (a few seconds on the demo's reward model)."""

    enabled: bool = False
    word_responses: int = Field(120, ge=1, description="held-out responses whose every token is left out once, for "
                                "the words the reward model rewards and punishes most (data without gold)")
    word_min_count: int = Field(5, ge=1, description="a word enters that table once it occurs this many times")


class JudgeConfig(_Section):
    """Independent judges for HH, where no gold exists (minirlhf/judge.py): a language model's pairwise choice (both
    orders) and a judge reward model trained on pairs disjoint from the proxy's (data.hh_judge_rows). Each one's
    agreement with the human labels on the held-out pairs, then each evaluated policy against SFT. Off by default."""

    enabled: bool = False
    model: str | None = Field("smollm2", description="the language-model judge: a packaged name, hub id or local dir "
                              "(not trained here); null: no language-model judge")
    reward_model: bool = Field(False, description="also train a judge reward model (the reward section's recipe, "
                               "model.reward_backbone) on the data.hh_judge_rows rows the proxy never saw")
    question: str = Field("Which response is more helpful, honest and harmless?", min_length=1)
    n_pairs: int = Field(300, ge=1, description="held-out pairs (pairs_test) to measure agreement on")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(768, ge=32, description="judge prompt tokens; longer conversations are cut from the left")


class CAIConfig(_Section):
    """Constitutional AI's supervised part (minirlhf/cai.py): the SFT policy answers red-team prompts, a critic
    critiques each answer by a principle of the constitution and revises it. Off by default."""

    enabled: bool = False
    critic: str = Field("policy", description="'policy' (self-critique: the SFT model), or a model name, hub id or "
                        "local dir (e.g. smollm2, packaged offline)")
    constitution: str = Field("configs/constitution.yaml", description="the principles and few-shot examples")
    n_prompts: int = Field(64, ge=1, description="red-team prompts (the task's harmful requests; HH conversations)")
    max_new_tokens: int = Field(48, ge=1, description="per answer, critique and revision")
    temperature: float = Field(0.7, gt=0)
    max_prompt_length: int = Field(768, ge=16, description="tokens of context (few-shot examples, the exchange); "
                                   "cut from the left")


class SLCAIConfig(SFTConfig):
    """CAI-SL's policy (minirlhf/sl_cai.py): the SFT model fine-tuned further on the cai stage's revisions,
    with SFT demonstrations mixed in; the eval stage compares it with SFT like any policy. Off by default; needs
    cai.enabled. The training settings are SFT's, with a gentler schedule: it starts from the SFT model."""

    enabled: bool = False
    learning_rate: float = Field(1e-3, gt=0, le=1)
    num_train_epochs: float = Field(3, gt=0)
    demonstrations: float = Field(1.0, ge=0, description="SFT demonstrations mixed in per revision (Bai et al. "
                                  "2022 mix in helpfulness samples so harmlessness is not bought with helpfulness)")


class RLAIFConfig(_Section):
    """AI feedback (minirlhf/rlaif.py): a feedback model relabels the training pairs under the constitution's
    principles (both orders, the choice probability from its logits). Off by default."""

    enabled: bool = False
    feedback: str = Field("policy", description="'policy' (the SFT model), or a model name, hub id or local dir "
                          "(e.g. smollm2, packaged offline)")
    constitution: str = Field("configs/constitution.yaml", description="whose choice questions are asked")
    n_pairs: int = Field(2400, ge=1, description="training pairs to relabel (the first ones)")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(768, ge=32, description="feedback prompt tokens; cut from the left")


class EvalConfig(_Section):
    n_prompts: int = Field(200, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(24, ge=1)
    seed: int = 1234


class DetectConfig(_Section):
    """Thresholds of the reward-hacking detectors (minirlhf/detect.py), each policy against SFT."""

    gold_drop: float = Field(0.1, ge=0, description="eval: gold reward below SFT's by more than this, "
                             "with proxy above it")
    proxy_gain: float = Field(0.1, ge=0, description="eval: proxy reward above SFT's by more than this")
    curve_gold_drop: float = Field(0.25, ge=0, description="PPO curve: smoothed gold fall from its peak, "
                                   "while proxy still rises")
    smooth_window: int = Field(10, ge=1, description="PPO curve: steps in the moving average")
    kl_spike_factor: float = Field(5.0, gt=1, description="PPO curve: a step's KL over this many times "
                                   "the median before it")
    kl_spike_min: float = Field(2.0, ge=0, description="PPO curve: ... and above this many nats")
    length_ratio: float = Field(2.0, gt=1, description="eval: mean response length over this many times SFT's")
    distinct_ratio: float = Field(0.5, gt=0, lt=1, description="eval: distinct-2 under this fraction of SFT's")
    refusal_increase: float = Field(0.2, ge=0, description="eval: benign refusal rate above SFT's by more than this")
    degenerate_increase: float = Field(0.15, ge=0, description="eval: share of empty/looping responses "
                                       "above SFT's by more than this")
    n_examples: int = Field(3, ge=1, description="example responses stored with each event")


class EnsembleConfig(_Section):
    """Reward models beside the proxy (minirlhf.ensemble): the gold-free hacking signals and the conservative
    reward. Off in the demo (it trains members more reward models); on in configs/demo-ensemble.yaml."""

    enabled: bool = False
    members: int = Field(4, ge=2, description="reward models in the ensemble, the proxy (reward stage) included")
    bootstrap: bool = Field(True, description="each further member trains on a bootstrap resample of the pairs, "
                            "from its own seed (score-head init and data order)")
    num_train_epochs: float | None = Field(None, gt=0, description="per further member; None: reward's")
    heldout: bool = Field(True, description="also train a reward model on the held-out pairs (pairs_test), "
                          "disjoint from the proxy's: the heldout_gap signal")


# The policies trained beside PPO, each a stage with a section of that name: a sweep over PPO's settings turns them off.
BASELINES = ("dpo", "rloo", "grpo")

# The gold-free reward-hacking signals, computed by minirlhf.hacking (each documented there).
SIGNALS = ("ensemble_disagreement", "heldout_gap", "ood_share", "phrase_rise", "kl_acceleration", "kl_level",
           "entropy_drop", "length_drift", "repetition")


class HackingConfig(_Section):
    """The gold-free early warning during PPO (minirlhf.hacking): signals logged every step as ppo/signal/<name>;
    the warning fires when `min_signals` of them stay at or above their threshold for `patience` steps."""

    # Calibrated 2026-12-05 (docs/REWARD_HACKING.md, commit 367511e): chosen on all 18 watched runs of `minirlhf
    # calibrate --config configs/calibration.yaml` (kl_coef 0.5 ... 0.01 x ppo.seed 1-3); leave-one-seed-out, the
    # warning found 7 of 7 gold onsets with 1 false alarm in 11 healthy runs, a median 2 steps early.
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"ood_share": 0.0859, "phrase_rise": 0.3472, "kl_acceleration": 0.1992,
                                 "kl_level": 3.668},
        description="signal name -> threshold; names from minirlhf.hacking.SIGNALS")
    min_signals: int = Field(2, ge=1)
    patience: int = Field(2, ge=1, description="consecutive steps a signal must stay over its threshold")
    warmup: int = Field(3, ge=1, description="steps before any signal counts (step 1 is the baseline)")
    phrase_n: int = Field(3, ge=1, description="n of the n-grams phrase_rise counts")
    # The truth the warning is calibrated against, where gold exists (minirlhf.hacking.gold_onset).
    onset_drop: float = Field(0.1, gt=0, description="gold onset: smoothed gold this far below its running max")
    onset_window: int = Field(5, ge=1, description="gold onset: steps in the moving average of gold and proxy")
    rollback: bool = Field(False, description="when the warning fires: stop PPO, record a reward_hacking_onset "
                           "failure event, and output the last checkpoint from before the signals rose")
    rollback_kl_scale: float | None = Field(None, ge=1, description="after a rollback, train on from that checkpoint "
                                            "to ppo.steps with kl_coef times this (the warning then stops nothing "
                                            "more); None: stop at the rollback")

    @model_validator(mode="after")
    def _known_signals(self) -> "HackingConfig":
        unknown = sorted(set(self.thresholds) - set(SIGNALS))
        if unknown:
            raise ValueError(f"unknown signal(s) {', '.join(unknown)} in thresholds; choose from {', '.join(SIGNALS)}")
        if self.min_signals > max(len(self.thresholds), 1):
            raise ValueError(f"min_signals ({self.min_signals}) exceeds the {len(self.thresholds)} thresholds given")
        return self


class StoreConfig(_Section):
    """The results store (minirlhf/store.py). Not in any stage key: it changes where results are recorded, not them."""

    lock_timeout_s: float = Field(600.0, ge=0, description="how long a write waits, with backoff, while another "
                                  "process (a dashboard, a long query, another run) holds rlhf.duckdb, "
                                  "before it gives up")


class StageResources(_Section):
    """What one task of a stage asks a Ray cluster for (prefect_ray.context.remote_options)."""

    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved for the task (and its torch threads)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved for the task; the task sees only those")


class RunnerConfig(_Section):
    """Where the flow runs its stage tasks (flows/runners.py). Not in any stage key: a stage computed on a Ray worker
    is the same output as one computed locally, so both modes share outputs and caches.

    `local`: one process, one stage after another (the default; no Ray needed). `ray`: Prefect's RayTaskRunner
    (prefect-ray) places tasks on a Ray cluster, independent stages at once; workers write their rows to journals
    that the flow process ingests (minirlhf/journal.py). `ray_address`: None starts a local Ray instance with
    `ray_num_cpus` CPUs for this run; `auto` joins the instance on this machine; `ray://host:10001` a remote head."""

    kind: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray instance (ray_address None); "
                                     "None: every core of this machine")
    threads_per_cpu: int = Field(1, ge=1, description="torch/OMP threads per CPU a task reserves (a task with "
                                 "num_cpus 2 runs 2 threads at 1): workers share the cores instead of oversubscribing")
    resources: dict[str, StageResources] = Field(default_factory=dict, description="per stage: what its task asks "
                                                 "for, e.g. {ppo: {num_gpus: 1}}; unnamed stages: 1 CPU, or "
                                                 "ppo.nproc CPUs for PPO (num_gpus: ppo.nproc when model.device is "
                                                 "cuda)")

    @field_validator("ray_address")
    @classmethod
    def _ray_address_form(cls, value: str | None) -> str | None:
        if value is not None and value != "auto" and ":" not in value:
            raise ValueError(f"{value!r} is not a Ray address: use auto, ray://<head>:10001 or <head>:6379")
        return value


class PipelineConfig(_Section):
    """The whole pipeline. `output_dir` holds checkpoints, `rlhf.duckdb` and reports."""

    name: str = "demo"
    seed: int = 0
    output_dir: Path = Path("artifacts")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    sft: SFTConfig = SFTConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig = PPOConfig()
    dpo: DPOConfig = DPOConfig()
    rloo: RLOOConfig = RLOOConfig()
    grpo: GRPOConfig = GRPOConfig()
    interpret: InterpretConfig = InterpretConfig()
    cai: CAIConfig = CAIConfig()
    sl_cai: SLCAIConfig = SLCAIConfig()
    rlaif: RLAIFConfig = RLAIFConfig()
    eval: EvalConfig = EvalConfig()
    judge: JudgeConfig = JudgeConfig()
    detect: DetectConfig = DetectConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    hacking: HackingConfig = HackingConfig()
    store: StoreConfig = StoreConfig()
    runner: RunnerConfig = RunnerConfig()

    @model_validator(mode="after")
    def _ai_labels_need_the_rlaif_stage(self) -> "PipelineConfig":
        if self.reward.labels == "ai" and not self.rlaif.enabled:
            raise ValueError("reward.labels=ai trains on the rlaif stage's labels: set rlaif.enabled=true too")
        return self

    @model_validator(mode="after")
    def _sl_cai_needs_the_cai_stage(self) -> "PipelineConfig":
        if self.sl_cai.enabled and not self.cai.enabled:
            raise ValueError("sl_cai.enabled trains on the cai stage's revisions: set cai.enabled=true too")
        return self

    @model_validator(mode="after")
    def _conservative_reward_needs_the_ensemble(self) -> "PipelineConfig":
        if self.ppo.reward != "proxy" and not self.ensemble.enabled:
            raise ValueError(f"ppo.reward={self.ppo.reward} needs the reward-model ensemble: set ensemble.enabled=true "
                             "(or ppo.reward=proxy)")
        return self

    @model_validator(mode="after")
    def _judge_reward_model_needs_its_own_rows(self) -> "PipelineConfig":
        if self.judge.enabled and self.judge.reward_model:
            if self.data.source != "hh" or self.data.hh_judge_rows == 0:
                raise ValueError("judge.reward_model trains on rows the proxy never saw: set data.source=hh and "
                                 "data.hh_judge_rows (e.g. 500)")
            if self.model.reward_backbone == "sft":
                raise ValueError("judge.reward_model starts from model.reward_backbone, which must be a base model "
                                 "independent of the policy, not 'sft'")
        if self.judge.enabled and not self.judge.model and not self.judge.reward_model:
            raise ValueError("judge.enabled with no judge: set judge.model or judge.reward_model=true")
        return self

    def section_json(self, *sections: str, exclude: dict[str, set[str]] | None = None) -> str:
        """Canonical JSON of some sections (less the `exclude`d fields, {"model": {"reward_backbone"}}): the part
        of the config a stage's cache key depends on."""
        dumped = self.model_dump(mode="json", exclude=exclude)
        return json.dumps({s: dumped[s] for s in sections}, sort_keys=True)


def method_seed(cfg: "PipelineConfig", method: str) -> int:
    """A policy method's own seed (`<method>.seed`: ppo, dpo, rloo, grpo), else the pipeline's."""
    own = getattr(cfg, method).seed
    return cfg.seed if own is None else own


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message, one line, names the file or each bad field path and says what
    to do. A UserError (the CLI prints it and exits 2), and a ValueError for callers that catch that."""


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names valid at the parent of `loc` (for 'unknown key' messages)."""
    model: type[BaseModel] = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def _format_errors(err: ValidationError, source: str) -> str:
    """Every bad field on one line (the CLI prints one line): 'invalid config (x.yaml): a.b: ...; c.d: ...'."""
    problems = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(e["loc"]))
            problems.append(f"{path}: unknown key. Allowed keys here: {allowed}")
        else:
            got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
            problems.append(f"{path}: {e['msg']}{got}")
    return f"invalid config ({source}): " + "; ".join(problems)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """Where and what, on one line: 'line 3, column 5: mapping values are not allowed here'."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'ppo.kl_coef=0.02' -> ('ppo.kl_coef', 0.02). The value is read as YAML (numbers, bools, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.field=value, e.g. --set ppo.kl_coef=0.02")
    key, raw = text.split("=", 1)
    if not raw.strip():
        return key.strip(), ""
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({_yaml_problem(err)}); write a number, "
                          "true/false, null, a list like [1, 2], or quote a string") from None


def build_config(tree: dict | None = None, overrides: list[str] | tuple[str, ...] = (),
                 source: str = "<dict>") -> PipelineConfig:
    tree = json.loads(json.dumps(tree or {}, default=str))  # deep copy; YAML dates etc. become strings
    for text in overrides:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load a YAML config (or the defaults when `path` is None) and apply `section.field=value` overrides."""
    tree = read_config_file(Path(path)) if path is not None else {}
    return build_config(tree, overrides, source=str(path) if path else "defaults")


def read_config_file(path: Path) -> dict:
    """The sections of a YAML config file, or ConfigError naming the file and what is wrong with it."""
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a YAML config file; give a file such as configs/demo.yaml")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Try configs/demo.yaml.")
    text = _config_text(path)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)}); fix it there "
                          "(configs/demo.yaml shows the layout)") from None
    if loaded is None:
        # An empty file must not quietly mean "run the defaults": the user meant to set something.
        what = ("the config file is empty" if not text.strip()
                else "the config holds no settings (only comments or null)")
        raise ConfigError(f"{path}: {what}; put the sections to change in it (as in configs/demo.yaml), "
                          "or leave out --config to run the defaults")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level is a {type(loaded).__name__}, not a mapping of sections; "
                          "write sections as `ppo:` with indented `kl_coef: 0.1` lines (see configs/demo.yaml)")
    return loaded


def _config_text(path: Path) -> str:
    """The file as UTF-8 text, or ConfigError when it is binary (an image, an archive, a checkpoint)."""
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{path}: binary data (a NUL byte at offset {nul}), not a YAML config; "
                          "give a YAML text file such as configs/demo.yaml")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: binary data (byte 0x{data[err.start]:02x} at offset {err.start} is not UTF-8), "
                          "not a YAML config; give a YAML text file such as configs/demo.yaml") from None
