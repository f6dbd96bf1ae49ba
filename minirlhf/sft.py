"""The SFT stage: supervised fine-tuning on demonstrations with TRL's SFTTrainer, loss on the response only.

Usage:
    from minirlhf.sft import run_sft
    result = run_sft(cfg, data_dir=Path("artifacts/data/<key>"), out_dir=Path("artifacts/sft/<key>"))
    result.metrics["sft/loss"]

With `model.policy = "tiny"` the base model is built here from scratch (a BPE tokenizer trained on the
task corpus plus a small GPT-2); otherwise it is loaded by hub id, directory or packaged name.
The output directory is a `save_pretrained` checkpoint (model + tokenizer), `metrics.json`, the manifest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer

from minirlhf.config import PipelineConfig
from minirlhf.data.task import read_jsonl
from minirlhf.models import build_tiny, load_policy
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output


def corpus(data_dir: Path) -> list[str]:
    """Every text of the data stage, for training the tiny model's tokenizer."""
    texts = []
    for row in read_jsonl(data_dir / "sft.jsonl"):
        texts.append(row["prompt"] + row["completion"])
    for row in read_jsonl(data_dir / "pairs_train.jsonl"):
        texts += [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]
    return texts


def base_model(cfg: PipelineConfig, data_dir: Path):
    if cfg.model.policy == "tiny":
        return build_tiny(cfg.model.tiny, corpus(data_dir), seed=cfg.seed)
    return load_policy(cfg.model.policy, cfg.model.gguf_file, cfg.model.trust_remote_code)


class LogToStore(TrainerCallback):
    """Forward the Trainer's logs (loss, learning rate, ...) to our logger, named by `template`
    ("sft/{}" gives sft/loss; "rm/train_{}" gives rm/train_accuracy, apart from held-out rm/accuracy)."""

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
        # GPU path: bf16 where the device supports it (TRL defaults to bf16 and refuses it on CPU).
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        use_cpu=not torch.cuda.is_available(),
    )


def run_sft(cfg: PipelineConfig, data_dir: Path, out_dir: Path, logger: MetricLogger | None = None) -> StageResult:
    logger = logger or NullLogger()
    started = time.perf_counter()
    rows = read_jsonl(Path(data_dir) / "sft.jsonl")
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    set_seed(cfg.seed)
    tokenizer, model = base_model(cfg, Path(data_dir))
    result = StageResult("sft", "", "")
    with stage_output(out_dir, result) as tmp:
        args = SFTConfig(
            **trainer_common_args(cfg.sft, cfg.seed, tmp / "trainer"),
            completion_only_loss=True,  # loss on the response only (prompt tokens are masked)
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[LogToStore("sft/{}", logger, result.history)],
        )
        output = trainer.train()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        losses = [h["sft/loss"] for h in result.history if "sft/loss" in h]
        result.metrics = {
            "sft/loss": losses[-1] if losses else float(output.training_loss),
            "sft/train_loss_mean": float(output.training_loss),
            "sft/steps": float(output.global_step),
            "sft/examples": float(len(rows)),
        }
        result.seconds = time.perf_counter() - started
        result.step = int(output.global_step)
        result.metrics["sft/seconds"] = result.seconds
        (tmp / "metrics.json").write_text(json.dumps(result.metrics, indent=1))
        _remove(tmp / "trainer")
    return result


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
