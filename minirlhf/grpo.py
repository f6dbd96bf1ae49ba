"""The GRPO baseline: TRL's GRPOTrainer on PPO's prompts, rewarded exactly as RLOO (minirlhf.rloo), from and
anchored to SFT.

Usage:
    from minirlhf.grpo import run_grpo
    result = run_grpo(cfg, data_dir, sft_dir, reward_dir, out_dir, logger)   # StageResult with grpo/* metrics

GRPO (Shao et al. 2024, "DeepSeekMath", Sec. 4.1) samples a group of k = `grpo.num_generations` responses per
prompt and uses each one's reward standardised within its group, (r - mean) / std, as the advantage of every token
(no value model, no GAE); the KL to the reference is a separate loss term, beta * KL (the k3 estimator), not a
reward penalty as in PPO and RLOO. The reward is RLOO's: `prompt + response + EOS` through
`minirlhf.scoring.score_texts`, plus `grpo.missing_eos_penalty` for a response that stops without EOS, so the
three RL methods optimise the same number. Metrics per step: grpo/reward, grpo/kl, grpo/proxy_reward,
grpo/gold_reward (embedded task), grpo/eos_rate, ... as RLOO's.
"""

from __future__ import annotations

from pathlib import Path

from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer

from minirlhf.config import PipelineConfig, method_seed
from minirlhf.rloo import group_args, run_group_baseline
from minirlhf.stage import MetricLogger, StageResult


def grpo_args(cfg: PipelineConfig, output_dir: Path) -> TRLGRPOConfig:
    return TRLGRPOConfig(**group_args(cfg.grpo, method_seed(cfg, "grpo"), output_dir), loss_type=cfg.grpo.loss_type,
                         scale_rewards=cfg.grpo.scale_rewards)


def run_grpo(cfg: PipelineConfig, data_dir: Path, sft_dir: Path, reward_dir: Path, out_dir: Path,
             logger: MetricLogger | None = None) -> StageResult:
    return run_group_baseline("grpo", GRPOTrainer, grpo_args, cfg, data_dir, sft_dir, reward_dir, out_dir, logger)
