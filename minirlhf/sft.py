"""The SFT stage: supervised fine-tuning on demonstrations with TRL's SFTTrainer, loss on the response only.

Usage:
    from minirlhf.sft import run_sft
    result = run_sft(cfg, data_dir=Path("artifacts/data/<key>"), out_dir=Path("artifacts/sft/<key>"))
    result.metrics["sft/loss"]

With `model.policy = "tiny"` the base model is built here from scratch (a BPE tokenizer trained on the
task corpus plus a small GPT-2); otherwise it is loaded by hub id, directory or packaged name.
The output directory is a `save_pretrained` checkpoint (model + tokenizer), its record and manifest (minirlhf.stage).

`fine_tune` (TRL's SFTTrainer on prompt/completion rows) also makes CAI-SL's policy (minirlhf/sl_cai.py).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from datasets import Dataset
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from minirlhf.config import PipelineConfig, SFTConfig as SFTSection
from minirlhf.data.task import read_jsonl
from minirlhf.models import build_tiny, load_policy, lora_config
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output
from minirlhf.training import LogToStore, train_and_save, trainer_common_args


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


def run_sft(cfg: PipelineConfig, data_dir: Path, out_dir: Path, logger: MetricLogger | None = None) -> StageResult:
    rows = read_jsonl(Path(data_dir) / "sft.jsonl")
    set_seed(cfg.seed)
    tokenizer, model = base_model(cfg, Path(data_dir))
    return fine_tune("sft", cfg.sft, cfg, tokenizer, model, rows, out_dir, logger)


def fine_tune(stage: str, section: SFTSection, cfg: PipelineConfig, tokenizer, model, rows: list[dict],
              out_dir: Path, logger: MetricLogger | None = None) -> StageResult:
    """TRL's SFTTrainer on prompt/completion rows (loss on the completion), by the settings of `section`; the
    metrics are named `<stage>/...`."""
    logger = logger or NullLogger()
    started = time.perf_counter()
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    result = StageResult(stage, "", "")
    with stage_output(out_dir, result) as tmp:
        args = SFTConfig(
            **trainer_common_args(section, cfg.seed, tmp / "trainer"),
            completion_only_loss=True,  # loss on the response only (prompt tokens are masked)
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[LogToStore(stage + "/{}", logger, result.history)],
            peft_config=lora_config(cfg.model.lora, "CAUSAL_LM"),  # None: full fine-tuning
        )
        output, trainable, _ = train_and_save(trainer, tokenizer, tmp)  # LoRA merged: a plain checkpoint
        losses = [h[f"{stage}/loss"] for h in result.history if f"{stage}/loss" in h]
        result.metrics = {
            f"{stage}/loss": losses[-1] if losses else float(output.training_loss),
            f"{stage}/train_loss_mean": float(output.training_loss),
            f"{stage}/steps": float(output.global_step),
            f"{stage}/examples": float(len(rows)),
            f"{stage}/trainable_params": float(trainable),
        }
        result.seconds = time.perf_counter() - started
        result.step = int(output.global_step)
        result.metrics[f"{stage}/seconds"] = result.seconds
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
    return result
