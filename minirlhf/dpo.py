"""The DPO baseline: TRL's DPOTrainer on the reward model's preference pairs, starting from and anchored to SFT.

Usage:
    from minirlhf.dpo import run_dpo
    result = run_dpo(cfg, data_dir, sft_dir, out_dir, logger)   # StageResult with dpo/* metrics
    result.metrics["dpo/rewards/accuracies"], result.metrics["dpo/rewards/margins"]

DPO (Rafailov et al. 2023) skips the reward model and RL: it raises the implicit reward
beta * log(pi(y|x) / pi_sft(y|x)) of each chosen response over its rejected one, with the loss
-log sigmoid(beta * [(log pi - log pi_sft)(chosen) - (log pi - log pi_sft)(rejected)]).
It learns from exactly the pairs the reward model learns from (`pairs_train.jsonl`), so the evaluation
compares RLHF with and without an explicit reward model on the same preferences.

Metrics (as TRL logs them, named `dpo/<name>`): dpo/loss, dpo/rewards/chosen, dpo/rewards/rejected,
dpo/rewards/accuracies (share of pairs whose implicit reward prefers the chosen response), dpo/rewards/margins,
dpo/logps/chosen, dpo/logps/rejected; plus dpo/steps, dpo/seconds. The output is a plain `save_pretrained`
checkpoint with its tokenizer (LoRA adapters merged), which the eval stage loads like SFT's.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from datasets import Dataset
from transformers import set_seed
from trl import DPOConfig, DPOTrainer

from minirlhf.config import PipelineConfig, method_seed
from minirlhf.data.task import read_jsonl
from minirlhf.models import load_policy, lora_config
from minirlhf.scoring import fit_to_length
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output
from minirlhf.training import LogToStore, last_logged, train_and_save, trainer_common_args

# What the summary keeps of TRL's logs: the last logged value of each.
SUMMARY = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
           "logps/rejected")


def run_dpo(cfg: PipelineConfig, data_dir: Path, sft_dir: Path, out_dir: Path,
            logger: MetricLogger | None = None) -> StageResult:
    logger = logger or NullLogger()
    started = time.perf_counter()
    set_seed(method_seed(cfg, "dpo"))
    tokenizer, policy = load_policy(str(sft_dir))
    # The reference is a frozen copy of SFT. With LoRA, TRL uses the policy with its adapters switched off instead.
    ref_policy = None if cfg.model.lora.enabled else load_policy(str(sft_dir))[1]
    # Long dialogues (HH-RLHF) keep their last turns: the same cut as the reward model's training pairs.
    pairs, n_truncated, n_dropped = fit_to_length(read_jsonl(Path(data_dir) / "pairs_train.jsonl"), tokenizer,
                                                  cfg.dpo.max_length)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    result = StageResult("dpo", "", "")
    with stage_output(out_dir, result) as tmp:
        args = DPOConfig(
            **trainer_common_args(cfg.dpo, method_seed(cfg, "dpo"), tmp / "trainer"),
            beta=cfg.dpo.beta,
            # TRL appends EOS to chosen and rejected (as RewardTrainer does), so DPO also learns where to stop.
        )
        trainer = DPOTrainer(
            model=policy,
            ref_model=ref_policy,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[LogToStore("dpo/{}", logger, result.history)],
            peft_config=lora_config(cfg.model.lora, "CAUSAL_LM"),  # None: full fine-tuning
        )
        output, trainable, _ = train_and_save(trainer, tokenizer, tmp)  # LoRA merged: a plain checkpoint
        result.metrics = {f"dpo/{name}": last_logged(result.history, f"dpo/{name}") for name in SUMMARY}
        result.metrics = {k: v for k, v in result.metrics.items() if v is not None}
        result.metrics |= {
            "dpo/train_loss_mean": float(output.training_loss),
            "dpo/steps": float(output.global_step),
            "dpo/train_pairs": float(len(pairs)),
            "dpo/train_pairs_truncated": float(n_truncated),
            "dpo/pairs_dropped_too_long": float(n_dropped),
            "dpo/trainable_params": float(trainable),
        }
        result.seconds = time.perf_counter() - started
        result.step = int(output.global_step)
        result.metrics["dpo/seconds"] = result.seconds
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
    return result
