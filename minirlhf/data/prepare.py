"""The data stage: write the train/eval splits for the configured source into a stage directory.

Usage:
    from minirlhf.data.prepare import run_data
    result = run_data(cfg, out_dir=Path("artifacts/data/<key>"))   # StageResult; files: see minirlhf/data/task.py

`data.source = "embedded"` (default) generates the offline task with its gold annotator;
`data.source = "hh"` reads HH-RLHF rows (local .jsonl/.jsonl.gz or the hub id): the first `hh_n_train`
rows train (SFT on their chosen replies, the reward model on the pairs), the rest are held out.
Rows the HH parser rejects are reported by row number in `problems.json` and in the metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from minirlhf.config import PipelineConfig
from minirlhf.data.task import generate_task, write_jsonl
from minirlhf.stage import MetricLogger, StageResult, stage_output

SPLITS = ("sft", "pairs_train", "pairs_test", "rl_prompts", "eval_prompts")


def _write_hh(cfg: PipelineConfig, out: Path) -> dict[str, float]:
    from minirlhf.data.hh import load_hh, train_test_split_by_rows

    loaded = load_hh(cfg.data.hh_path, split=cfg.data.hh_split, data_dir=cfg.data.hh_data_dir, limit=cfg.data.hh_limit)
    train, test = train_test_split_by_rows(loaded.pairs, cfg.data.hh_n_train)
    # The judge reward model's rows: the last hh_judge_rows training rows, which nothing else reads.
    first_judge_row = cfg.data.hh_n_train - cfg.data.hh_judge_rows
    judge = [p for p in train if p.source_row >= first_judge_row]
    train = [p for p in train if p.source_row < first_judge_row]
    pair = lambda p: {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "intent": "hh",  # noqa: E731
                      "source_row": p.source_row}
    prompt = lambda p, split: {"prompt_id": f"{split}-{p.source_row:05d}", "prompt": p.prompt, "intent": "hh"}  # noqa: E731
    half = len(test) // 2
    write_jsonl(out / "sft.jsonl", [{"prompt": p.prompt, "completion": p.chosen, "intent": "hh"} for p in train])
    write_jsonl(out / "pairs_train.jsonl", [pair(p) for p in train])
    write_jsonl(out / "pairs_test.jsonl", [pair(p) for p in test])
    write_jsonl(out / "pairs_judge.jsonl", [pair(p) for p in judge])
    write_jsonl(out / "rl_prompts.jsonl", [prompt(p, "rl") for p in train])
    write_jsonl(out / "eval_prompts.jsonl", [prompt(p, "eval") for p in test[:half] or test])
    (out / "problems.json").write_text(json.dumps([vars(p) for p in loaded.problems], indent=1))
    return {"data/hh_rows": loaded.n_rows, "data/hh_pairs": len(loaded.pairs),
            "data/hh_rejected_rows": len(loaded.problems), "data/hh_judge_pairs": len(judge)}


def run_data(cfg: PipelineConfig, out_dir: Path, logger: MetricLogger | None = None) -> StageResult:
    started = time.perf_counter()
    result = StageResult("data")
    with stage_output(out_dir, result) as tmp:
        if cfg.data.source == "embedded":
            counts = generate_task(cfg.data, tmp)
            result.metrics = {f"data/n_{name}": float(n) for name, n in counts.items()}
        else:
            result.metrics = {k: float(v) for k, v in _write_hh(cfg, tmp).items()}
        result.seconds = time.perf_counter() - started
    return result
