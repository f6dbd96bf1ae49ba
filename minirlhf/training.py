"""What the TRL-based stages (SFT, reward model, DPO, RLOO, GRPO) share: common trainer arguments,
forwarding the Trainer's logs to our store, and each stage's progress line (PPO's too: `progress_bar`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from minirlhf import distributed
from minirlhf.models import count_parameters, merge_lora
from minirlhf.stage import MetricLogger


# `--verbose` (minirlhf.console.VERBOSE_ENV; not imported: the console is no part of a stage's code version)
VERBOSE_ENV = "MINIRLHF_VERBOSE"
# One line per stage, left on screen when done: `sft     ████████████████████ 20/20 [00:03<00:00, loss 3.98]`.
BAR_FORMAT = "{desc:<7} {bar:20} {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


# The numbers a stage's line shows, from the Trainer's logs: (key, label, format). RLOO's loss is about 0 by
# construction (leave-one-out advantages): its rewards and KL say how it goes, as PPO's line does.
BAR_NUMBERS = {None: (("loss", "loss", ".4g"),),
               "rloo": (("proxy_reward", "proxy", ".2f"), ("gold_reward", "gold", ".2f"), ("kl", "kl", ".2f"))}
BAR_NUMBERS["grpo"] = BAR_NUMBERS["rloo"]  # the same kind of trainer, the same numbers


def progress_bar(stage: str, total: int, initial: int = 0) -> tqdm:
    """A stage's progress line (stderr): name, bar, step/total, elapsed<ETA, then the numbers set as postfix."""
    return tqdm(total=total, initial=initial, desc=stage, bar_format=BAR_FORMAT, dynamic_ncols=True)


class StageProgress(ProgressCallback):
    """The Trainer's progress bar as the stage's one line, the last logged loss in it; the Trainer's log dicts,
    which ProgressCallback prints every `logging_steps`, go to the store only (LogToStore)."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = progress_bar(self.stage, state.max_steps)
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        shown = [f"{label} {logs[key]:{fmt}}" for key, label, fmt in BAR_NUMBERS.get(self.stage, BAR_NUMBERS[None])
                 if isinstance(logs.get(key), (int, float))]
        if self.training_bar is not None and shown:
            self.training_bar.set_postfix_str(", ".join(shown))


class LogToStore(TrainerCallback):
    """Forward the Trainer's logs (loss, learning rate, ...) to our logger, named by `template`
    ("sft/{}" gives sft/loss; "reward/train_{}" gives reward/train_accuracy, apart from held-out reward/accuracy)."""

    def __init__(self, template: str, logger: MetricLogger, history: list[dict]):
        self.template, self.logger, self.history = template, logger, history
        self.stage = template.split("/")[0]  # the stage's name, for its progress line

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
        # Data parallel (minirlhf.launch): `batch_size` is the whole batch, each of the ranks takes its share.
        per_device_train_batch_size=per_rank(stage_cfg.batch_size),
        # Every parameter of our stages' models takes part in the loss: DDP need not search for unused ones.
        ddp_find_unused_parameters=False,
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


def per_rank(batch_size: int) -> int:
    """This process's share of a batch: all of it in one process, batch_size / W on each of W ranks."""
    world = distributed.world_size()
    if batch_size % world:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of the number of processes ({world})")
    return batch_size // world


def train_and_save(trainer, tokenizer, out_dir: Path):
    """Train, fold any LoRA adapters into the weights, save model and tokenizer to `out_dir`: every TRL stage's
    output is a plain checkpoint the next stage loads as usual. Returns (TrainOutput, trainable params, model)."""
    trainable = count_parameters(trainer.model, trainable_only=True)
    verbose = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    if not verbose and trainer.pop_callback(ProgressCallback) is not None:  # none in a notebook: its own display
        stage = next((cb.stage for cb in trainer.callback_handler.callbacks if isinstance(cb, LogToStore)), "train")
        trainer.add_callback(StageProgress(stage))
    output = trainer.train()
    model = merge_lora(trainer.model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return output, trainable, model


def last_logged(history: list[dict], name: str) -> float | None:
    """The newest value of a metric in a stage's per-step history, or None if it was never logged."""
    values = [row[name] for row in history if name in row]
    return values[-1] if values else None
