"""The sl_cai stage (Constitutional AI, supervised part): the SFT model fine-tuned on the cai stage's revisions.

Usage:
    from minirlhf.sl_cai import run_sl_cai
    result = run_sl_cai(cfg, data_dir, sft_dir, cai_dir, out_dir)    # needs cai.enabled and sl_cai.enabled

Bai et al. 2022 (Sec. 3.1) fine-tune on the revisions with helpfulness samples mixed in, so harmlessness is not
bought with helpfulness; here those are SFT's own demonstrations (`sl_cai.demonstrations` per revision). The
training is SFT's (minirlhf.sft.fine_tune) from the SFT checkpoint; the eval stage compares the result with SFT like
any policy.
"""

from __future__ import annotations

import random
from pathlib import Path

from transformers import set_seed

from minirlhf.config import PipelineConfig
from minirlhf.data.task import read_jsonl
from minirlhf.models import load_policy
from minirlhf.sft import fine_tune
from minirlhf.stage import MetricLogger, StageResult


def revision_rows(revisions: list[dict], demonstrations: list[dict], per_revision: float, seed: int) -> list[dict]:
    """CAI-SL's training set: prompt + revision for every non-empty revision, and `per_revision` of SFT's
    demonstrations for each (drawn with `seed`), so the model keeps its helpful answers (Bai et al. 2022, Sec. 3.1,
    mix in helpfulness samples)."""
    rows = [{"prompt": r["prompt"], "completion": " " + r["revision"].strip()}
            for r in revisions if r["revision"].strip()]
    n_demos = min(len(demonstrations), round(per_revision * len(rows)))
    return rows + random.Random(seed).sample(demonstrations, n_demos)


def run_sl_cai(cfg: PipelineConfig, data_dir: Path, sft_dir: Path, cai_dir: Path, out_dir: Path,
               logger: MetricLogger | None = None) -> StageResult:
    """CAI-SL: the SFT policy fine-tuned on the cai stage's revisions (with SFT demonstrations mixed in); the eval
    stage then compares it with SFT like any policy."""
    revisions = read_jsonl(Path(cai_dir) / "revisions.jsonl")
    rows = revision_rows(revisions, read_jsonl(Path(data_dir) / "sft.jsonl"), cfg.sl_cai.demonstrations, cfg.seed)
    set_seed(cfg.seed)
    tokenizer, model = load_policy(str(sft_dir))
    return fine_tune("sl_cai", cfg.sl_cai, cfg, tokenizer, model, rows, out_dir, logger)
