"""AI feedback (RLAIF): a feedback model labels preference pairs under the constitution's principles.

Usage:
    from minirlhf.rlaif import ai_label, run_rlaif
    rows = ai_label(model, tokenizer, pairs, constitution, seed)   # pairs: {prompt, chosen, rejected} (human order)
    rows[0]["chosen"], rows[0]["p_first"], rows[0]["human_agrees"]
    result = run_rlaif(cfg, data_dir, sft_dir, out_dir)          # the stage: pairs_train.jsonl relabelled

Bai et al. 2022 (Sec. 4.1): for each pair the feedback model is asked a principle's multiple-choice question
(drawn at random per pair), and the normalised probabilities of its choices are the labels. Here the choice
probability comes from minirlhf.judge (the logits of "A" and "B", both orders averaged, so a pure position bias
cancels); the response it prefers becomes `chosen`. The reward stage trains on these pairs exactly as on the human
ones (`reward.labels: ai`). Each row keeps the human order's agreement and, on the embedded task, the gold one's.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

from minirlhf.config import PipelineConfig
from minirlhf.constitution import Constitution, constitution_path, load_constitution
from minirlhf.data.gold import gold_or_none
from minirlhf.data.task import read_jsonl, write_jsonl
from minirlhf.judge import pairwise_preference
from minirlhf.models import load_policy, resolve_device
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output
from minirlhf.stats import bootstrap_mean
from minirlhf.training import progress_bar

PAIRS = "pairs_train.jsonl"  # the relabelled pairs, named as the data stage names the human ones


def ai_label(model, tokenizer, pairs: list[dict], constitution: Constitution, seed: int, batch_size: int = 8,
             max_length: int = 768, on_batch: Callable[[int], object] | None = None) -> list[dict]:
    """Each pair relabelled: `chosen` is the response the feedback model prefers under the pair's principle;
    `p_first` its probability that the human-chosen one is better; `human_agrees` whether it kept the order."""
    rng = random.Random(seed)
    principles = [constitution.choose(rng) for _ in pairs]
    p_human_chosen = [0.0] * len(pairs)
    for principle in {p.name: p for p in principles}.values():  # one batch of questions per principle
        idx = [i for i, p in enumerate(principles) if p.name == principle.name]
        probs = pairwise_preference(model, tokenizer, [pairs[i]["prompt"] for i in idx],
                                    [pairs[i]["chosen"] for i in idx], [pairs[i]["rejected"] for i in idx],
                                    principle.choice_question, batch_size, max_length, on_batch)["p_a"]
        for i, p in zip(idx, probs.tolist()):
            p_human_chosen[i] = p
    rows = []
    for pair, principle, p in zip(pairs, principles, p_human_chosen):
        keep = p >= 0.5
        rows.append({**pair, "chosen": pair["chosen"] if keep else pair["rejected"],
                     "rejected": pair["rejected"] if keep else pair["chosen"], "principle": principle.name,
                     "p_first": p, "human_agrees": keep})
    return rows


def gold_agreement(rows: list[dict]) -> list[float]:
    """Per pair with a gold-distinguishable response (embedded task): 1 if `chosen` has the higher gold score."""
    out = []
    for r in rows:
        a, b = gold_or_none(r["prompt"], r["chosen"]), gold_or_none(r["prompt"], r["rejected"])
        if a is not None and b is not None and a != b:
            out.append(float(a > b))
    return out


def run_rlaif(cfg: PipelineConfig, data_dir: Path, sft_dir: Path, out_dir: Path,
              logger: MetricLogger | None = None) -> StageResult:
    """The training pairs relabelled by the feedback model (`rlaif.feedback`: the SFT policy, or a model name).
    Metrics: rlaif/human_agreement (with its 95% interval), rlaif/gold_agreement of the AI labels and of the human
    ones on the same pairs (embedded task), rlaif/n_pairs."""
    logger = logger or NullLogger()
    started = time.perf_counter()
    r = cfg.rlaif
    tokenizer, model = load_policy(str(sft_dir) if r.feedback == "policy" else r.feedback)
    model.to(resolve_device(cfg.model.device))
    pairs = read_jsonl(Path(data_dir) / "pairs_train.jsonl")[: r.n_pairs]
    bar = progress_bar("rlaif", 2 * len(pairs))  # each pair asked in both orders
    rows = ai_label(model, tokenizer, pairs, load_constitution(constitution_path(r.constitution)), cfg.seed,
                    r.batch_size, r.max_length, bar.update)
    bar.close()
    agree = bootstrap_mean([float(x["human_agrees"]) for x in rows], seed=cfg.seed)
    metrics = {"rlaif/n_pairs": float(len(rows)), "rlaif/human_agreement": agree.value,
               "rlaif/human_agreement_low": agree.low, "rlaif/human_agreement_high": agree.high}
    for name, labelled in (("ai", rows), ("human", pairs)):
        gold = gold_agreement(labelled)
        if gold:
            metrics[f"rlaif/gold_agreement_{name}"] = sum(gold) / len(gold)
    logger.log_metrics(metrics, step=0)
    logger.log_samples([{"prompt": x["prompt"], "response": x["chosen"], "rejected": x["rejected"],
                         "principle": x["principle"], "p_first": x["p_first"]} for x in rows[:64]],
                       step=0, policy="rlaif_chosen")
    result = StageResult("rlaif", metrics=metrics)
    with stage_output(out_dir, result) as tmp:
        write_jsonl(tmp / PAIRS, rows)  # the metrics are in the stage's record.json
        result.seconds = time.perf_counter() - started
    return result
