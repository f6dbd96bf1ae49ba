"""The reward-model stage: TRL's RewardTrainer (Bradley-Terry loss, one scalar output) on preference pairs,
then a held-out evaluation of what the model learned.

Usage:
    from minirlhf.reward import run_reward
    result = run_reward(cfg, data_dir, sft_dir, out_dir)          # StageResult with reward/* metrics

Scores are read through `minirlhf.scoring.score_texts`, the one scoring function of the project (PPO, RLOO and
evaluation use it too): `prompt + response + EOS`, exactly as RewardTrainer trained on.

`reward.length_corr_coef` > 0 trains with a length-debiased objective: the Bradley-Terry loss plus that coefficient
times |Pearson correlation| between each batch's margins and the pairs' length differences (tokens), the length
loss of ODIN (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF") taken over pairs, so the
shared prompt's length cancels.

Held-out metrics (names as stored in DuckDB):
  reward/accuracy          agreement with the (noisy) held-out labels
  reward/label_ceiling     how often the noiseless gold choice agrees with those same labels (embedded task)
  reward/accuracy_gold     agreement with the gold annotator's choice
  reward/margin            mean score(chosen) - score(rejected)
  reward/accuracy/<intent> accuracy per intent
  reward/length_corr       Pearson correlation of score with response length (words)
  reward/gold_corr         Pearson correlation of score with the gold score
  reward/filler_effect     mean score change from appending the filler phrase (the spurious feature)
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed
from trl import RewardConfig, RewardTrainer

from minirlhf.config import PipelineConfig
from minirlhf.data.gold import FILLER
from minirlhf.data.task import read_jsonl
from minirlhf.models import load_reward_model, lora_config
from minirlhf.scoring import fit_to_length, score_texts
from minirlhf.stats import bootstrap_mean
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output
from minirlhf.training import LogToStore, train_and_save, trainer_common_args


def _pearson(x: list[float], y: list[float]) -> float:
    if len(x) < 2:
        return float("nan")
    t = torch.tensor([x, y], dtype=torch.float64)
    return float(torch.corrcoef(t)[0, 1])


def evaluate_pairs(model, tokenizer, pairs: list[dict], max_length: int = 512) -> tuple[dict[str, float], list[dict]]:
    """Held-out diagnostics of a reward model on preference pairs (see the module docstring)."""
    prompts = [p["prompt"] for p in pairs]
    chosen = score_texts(model, tokenizer, prompts, [p["chosen"] for p in pairs], max_length=max_length)
    rejected = score_texts(model, tokenizer, prompts, [p["rejected"] for p in pairs], max_length=max_length)
    correct = (chosen > rejected).float()
    interval = bootstrap_mean(correct.tolist())  # over pairs: 297 HH pairs give about +-0.055
    metrics = {
        "reward/accuracy": float(correct.mean()),
        "reward/accuracy_low": interval.low,
        "reward/accuracy_high": interval.high,
        "reward/margin": float((chosen - rejected).mean()),
        "reward/n_test_pairs": float(len(pairs)),
    }
    for intent in sorted({p.get("intent", "all") for p in pairs}):
        idx = [i for i, p in enumerate(pairs) if p.get("intent", "all") == intent]
        metrics[f"reward/accuracy/{intent}"] = float(correct[idx].mean())
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    all_scores = torch.cat([chosen, rejected]).tolist()
    metrics["reward/length_corr"] = _pearson(all_scores, [float(len(r.split())) for r in responses])
    if all("gold_chosen" in p for p in pairs):
        gold_c = torch.tensor([p["gold_chosen"] for p in pairs])
        gold_r = torch.tensor([p["gold_rejected"] for p in pairs])
        decided = gold_c != gold_r  # gold ties have no noiseless choice
        gold_prefers_chosen = gold_c > gold_r
        # The ceiling: a perfect model of the gold annotator still disagrees with the noisy labels this often.
        metrics["reward/label_ceiling"] = float(torch.where(decided, gold_prefers_chosen.float(),
                                                            torch.full_like(gold_c, 0.5)).mean())
        metrics["reward/accuracy_gold"] = float(((chosen > rejected) == gold_prefers_chosen)[decided].float().mean())
        metrics["reward/gold_corr"] = _pearson(all_scores, torch.cat([gold_c, gold_r]).tolist())
        # The spurious feature: what appending the filler phrase does to the score of answers without it.
        plain = [(p["prompt"], p["chosen"]) for p in pairs if FILLER not in p["chosen"]]
        if plain:
            before = score_texts(model, tokenizer, [a for a, _ in plain], [b for _, b in plain], max_length=max_length)
            after = score_texts(model, tokenizer, [a for a, _ in plain], [f"{b} {FILLER}" for _, b in plain],
                                max_length=max_length)
            metrics["reward/filler_effect"] = float((after - before).mean())
    rows = [
        {"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"], "intent": p.get("intent"),
         "score_chosen": float(c), "score_rejected": float(r), "gold_chosen": p.get("gold_chosen"),
         "gold_rejected": p.get("gold_rejected")}
        for p, c, r in zip(pairs, chosen.tolist(), rejected.tolist())
    ]
    return {k: v for k, v in metrics.items() if not math.isnan(v)}, rows


def _backbone(cfg: PipelineConfig, sft_dir: Path) -> str:
    return str(sft_dir) if cfg.model.reward_backbone == "sft" else cfg.model.reward_backbone


def new_reward_model(cfg: PipelineConfig, backbone: str, seed: int):
    """(tokenizer, model): `backbone` with a new score head initialised from `seed`, whatever ran before."""
    set_seed(seed)
    return load_reward_model(backbone, cfg.model.gguf_file, pooling=cfg.reward.pooling,
                             response_marker=cfg.reward.response_marker)


def length_correlation(margins: torch.Tensor, length_diffs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """|Pearson(margins, length_diffs)| over a batch's pairs: (n,), (n,) -> scalar. 0 where either is constant."""
    m, d = margins - margins.mean(), length_diffs.float() - length_diffs.float().mean()
    return (m * d).sum().abs() / ((m.pow(2).sum() * d.pow(2).sum()).sqrt() + eps)


class LengthDebiasedRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer with `length_corr_coef * length_correlation(...)` added to its loss. RewardTrainer stacks
    each batch as (chosen, rejected) rows, so the attention masks give each response's length in tokens."""

    def __init__(self, *args, length_corr_coef: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.length_corr_coef = length_corr_coef

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)  # (n,), (n,)
        chosen_len, rejected_len = torch.chunk(inputs["attention_mask"].sum(dim=1), chunks=2)
        corr = length_correlation(chosen - rejected, chosen_len - rejected_len)
        self._metrics["train" if model.training else "eval"]["length_corr"].append(float(corr))
        loss = loss + self.length_corr_coef * corr
        return (loss, outputs) if return_outputs else loss


def reward_trainer(cfg: PipelineConfig, model, tokenizer, train: list[dict], out_dir: Path, seed: int,
                   logger: MetricLogger, history: list[dict], name: str = "reward",
                   epochs: float | None = None) -> RewardTrainer:
    """TRL's RewardTrainer on `train` pairs with the reward section's settings (the length-debiased one where
    reward.length_corr_coef > 0). `seed` decides the data order; `epochs` overrides reward.num_train_epochs."""
    args = RewardConfig(
        **(trainer_common_args(cfg.reward, seed, out_dir / "trainer")
           | ({"num_train_epochs": epochs} if epochs is not None else {})),
        center_rewards_coefficient=cfg.reward.center_rewards_coefficient,
    )
    debiased = cfg.reward.length_corr_coef > 0
    return (LengthDebiasedRewardTrainer if debiased else RewardTrainer)(
        **({"length_corr_coef": cfg.reward.length_corr_coef} if debiased else {}),
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in train]),
        processing_class=tokenizer,
        callbacks=[LogToStore(name + "/train_{}", logger, history)],
        # LoRA: adapters plus a fully trained score head (peft's SEQ_CLS keeps 'score'/'classifier' trainable)
        peft_config=lora_config(cfg.model.lora, "SEQ_CLS"),
    )


def train_reward_model(cfg: PipelineConfig, model, tokenizer, train: list[dict], out_dir: Path, seed: int,
                       logger: MetricLogger, history: list[dict], name: str = "reward", epochs: float | None = None):
    """Train one reward model (Bradley-Terry, `reward_trainer`) on `train` pairs and save it, LoRA merged, to
    `out_dir`; returns (TrainOutput, trainable parameter count, the trained model). `epochs`: the ensemble's
    members."""
    trainer = reward_trainer(cfg, model, tokenizer, train, out_dir, seed, logger, history, name, epochs)
    output, trainable, model = train_and_save(trainer, tokenizer, out_dir)  # LoRA merged: a plain checkpoint
    shutil.rmtree(out_dir / "trainer", ignore_errors=True)
    return output, trainable, model


def chosen_score_stats(model, tokenizer, rows: list[dict], max_length: int) -> dict[str, float]:
    """Mean, spread and 99th percentile of the scores of `rows`' chosen responses: PPO can normalise rewards with
    the first two, and a policy sample scored above the third earned what no training answer did
    (minirlhf.hacking.ood_share)."""
    scores = score_texts(model, tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                         max_length=max_length)
    return {"score_mean": float(scores.mean()), "score_std": float(scores.std()),
            "chosen_p99": float(torch.quantile(scores.float(), 0.99))}


def run_reward(cfg: PipelineConfig, data_dir: Path, sft_dir: Path | None, out_dir: Path,
               logger: MetricLogger | None = None, rlaif_dir: Path | None = None) -> StageResult:
    """The reward model on the training pairs (`reward.labels: ai`: the rlaif stage's relabelled ones, `rlaif_dir`),
    evaluated on the held-out pairs' human labels."""
    logger = logger or NullLogger()
    started = time.perf_counter()
    data_dir = Path(data_dir)
    train = read_jsonl((Path(rlaif_dir) if cfg.reward.labels == "ai" else data_dir) / "pairs_train.jsonl")
    test = read_jsonl(data_dir / "pairs_test.jsonl")
    tokenizer, model = new_reward_model(cfg, _backbone(cfg, Path(sft_dir) if sft_dir else None), cfg.seed)
    train, n_truncated, n_dropped = fit_to_length(train, tokenizer, cfg.reward.max_length, cfg.reward.keep_prompt_head)
    test, _, n_test_dropped = fit_to_length(test, tokenizer, cfg.reward.max_length, cfg.reward.keep_prompt_head)
    result = StageResult("reward", "", "")
    with stage_output(out_dir, result) as tmp:
        output, trainable, model = train_reward_model(cfg, model, tokenizer, train, tmp, cfg.seed, logger,
                                                      result.history)
        metrics, rows = evaluate_pairs(model, tokenizer, test, max_length=cfg.reward.max_length)
        # Score statistics on the training responses (reward.score_stats_max_pairs of them).
        stats = chosen_score_stats(model, tokenizer, train[: cfg.reward.score_stats_max_pairs], cfg.reward.max_length)
        metrics |= {
            "reward/train_loss_mean": float(output.training_loss),
            "reward/steps": float(output.global_step),
            "reward/train_pairs": float(len(train)),
            "reward/trainable_params": float(trainable),
            "reward/train_pairs_truncated": float(n_truncated),
            "reward/pairs_dropped_too_long": float(n_dropped + n_test_dropped),
            **{f"reward/{k}": v for k, v in stats.items()},
        }
        result.seconds = time.perf_counter() - started
        result.step = int(output.global_step)
        metrics["reward/seconds"] = result.seconds
        result.metrics = metrics
        with open(tmp / "eval_pairs.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    return result
