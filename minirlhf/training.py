"""What the TRL-based stages (SFT, reward model, and later DPO/RLOO) share: common trainer arguments and
forwarding the Trainer's logs to our store."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

from minirlhf.models import count_parameters, merge_lora
from minirlhf.stage import MetricLogger


class LogToStore(TrainerCallback):
    """Forward the Trainer's logs (loss, learning rate, ...) to our logger, named by `template`
    ("sft/{}" gives sft/loss; "reward/train_{}" gives reward/train_accuracy, apart from held-out reward/accuracy)."""

    def __init__(self, template: str, logger: MetricLogger, history: list[dict]):
        self.template, self.logger, self.history = template, logger, history

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {self.template.format(k): float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        if numeric:
            self.logger.log_metrics(numeric, step=state.global_step)
            self.history.append({"step": state.global_step, **numeric})


def trainer_common_args(stage_cfg, seed: int, output_dir: Path) -> dict:
    """TrainingArguments shared by the TRL-based stages: offline, no checkpoints mid-way, quiet."""
    return dict(
        output_dir=str(output_dir),
        learning_rate=stage_cfg.learning_rate,
        num_train_epochs=stage_cfg.num_train_epochs,
        max_steps=getattr(stage_cfg, "max_steps", -1),  # a short run on a real model: a step budget, not epochs
        per_device_train_batch_size=stage_cfg.batch_size,
        warmup_steps=stage_cfg.warmup_ratio,
        weight_decay=stage_cfg.weight_decay,
        lr_scheduler_type="cosine",
        logging_steps=stage_cfg.logging_steps,
        max_length=stage_cfg.max_length,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        # TRL turns gradient checkpointing on by default; it also leaves `use_cache=False` in the saved config,
        # which made later generation recompute the whole sequence per token (SmolLM2: 3 s/token on CPU).
        # Our models fit in memory: trade none of the speed.
        gradient_checkpointing=False,
        # GPU path: bf16 where the device supports it (TRL defaults to bf16 and refuses it on CPU).
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        use_cpu=not torch.cuda.is_available(),
    )


def train_and_save(trainer, tokenizer, out_dir: Path):
    """Train, fold any LoRA adapters into the weights, save model and tokenizer to `out_dir`: every TRL stage's
    output is a plain checkpoint the next stage loads as usual. Returns (TrainOutput, trainable params, model)."""
    trainable = count_parameters(trainer.model, trainable_only=True)
    output = trainer.train()
    model = merge_lora(trainer.model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return output, trainable, model
