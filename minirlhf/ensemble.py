"""The reward-model ensemble stage: reward models beside the proxy, for gold-free hacking signals and a
conservative reward (minirlhf.hacking; configs/demo-ensemble.yaml).

Usage:
    from minirlhf.ensemble import run_ensemble
    result = run_ensemble(cfg, data_dir, sft_dir, reward_dir, out_dir)    # member-1/ ... heldout/ members.json
    ensemble = minirlhf.scoring.Ensemble.load(out_dir, proxy_stats, max_length, device)   # what PPO scores with

Members: the proxy (the reward stage's model, member 0) and `ensemble.members - 1` more, each from its own seed
(score-head init and data order) on a bootstrap resample of the training pairs (`ensemble.bootstrap`). Members
share the backbone (the SFT model): Eisenstein et al. 2023 found pretraining diversity matters most, which one
small backbone cannot give, so the stage measures how much the members disagree (ensemble/member_corr: mean
pairwise correlation of their scores on the held-out pairs) rather than assume it. The held-out model trains on
pairs_test, disjoint from every member's pairs. Each model's scores are standardised by the mean and spread of its
scores on the chosen responses of (the first reward.score_stats_max_pairs) training pairs, so members trained
apart speak in the same units.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from minirlhf.config import PipelineConfig
from minirlhf.data.task import read_jsonl
from minirlhf.models import load_reward_model
from minirlhf.reward import _backbone, chosen_score_stats, new_reward_model, train_reward_model
from minirlhf.scoring import HELDOUT, MEMBERS_FILE, fit_to_length, score_texts
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output



def bootstrap(rows: list[dict], seed: int) -> list[dict]:
    """A resample of `rows` with replacement, as many as there are, drawn from `seed`."""
    rng = random.Random(seed)
    return [rows[rng.randrange(len(rows))] for _ in rows]


def mean_pairwise_corr(scores: torch.Tensor) -> float:
    """Mean Pearson correlation over pairs of rows of `scores` (k, n): 1 when the members agree up to scale."""
    corr = torch.corrcoef(scores.double())
    k = corr.shape[0]
    return float((corr.sum() - k) / (k * (k - 1)))


def run_ensemble(cfg: PipelineConfig, data_dir: Path, sft_dir: Path | None, reward_dir: Path, out_dir: Path,
                 logger: MetricLogger | None = None) -> StageResult:
    logger = logger or NullLogger()
    started = time.perf_counter()
    data_dir = Path(data_dir)
    backbone = _backbone(cfg, Path(sft_dir) if sft_dir else None)
    train = read_jsonl(data_dir / "pairs_train.jsonl")
    test = read_jsonl(data_dir / "pairs_test.jsonl")
    result = StageResult("ensemble")
    members = []
    with stage_output(out_dir, result) as tmp:
        trained = []  # (name, model, tokenizer, stats rows)
        for i in range(1, cfg.ensemble.members):
            seed = cfg.seed + 1000 * i  # far from the proxy's seed and from any ppo.seed a sweep uses
            tokenizer, model = new_reward_model(cfg, backbone, seed)
            rows, _, _ = fit_to_length(train, tokenizer, cfg.reward.max_length, cfg.reward.keep_prompt_head)
            rows = bootstrap(rows, seed) if cfg.ensemble.bootstrap else rows
            _, _, model = train_reward_model(cfg, model, tokenizer, rows, tmp / f"member-{i}", seed, logger,
                                             result.history, name=f"ensemble/member_{i}",
                                             epochs=cfg.ensemble.num_train_epochs)
            trained.append((f"member-{i}", seed, model, tokenizer, rows))
        if cfg.ensemble.heldout:
            seed = cfg.seed + 999
            tokenizer, model = new_reward_model(cfg, backbone, seed)
            rows, _, _ = fit_to_length(test, tokenizer, cfg.reward.max_length, cfg.reward.keep_prompt_head)
            _, _, model = train_reward_model(cfg, model, tokenizer, rows, tmp / HELDOUT, seed, logger, result.history,
                                             name="ensemble/heldout", epochs=cfg.ensemble.num_train_epochs)
            trained.append((HELDOUT, seed, model, tokenizer, rows))
        for name, seed, model, tokenizer, rows in trained:
            stats = chosen_score_stats(model, tokenizer, rows[: cfg.reward.score_stats_max_pairs],
                                       cfg.reward.max_length)
            members.append({"name": name, "seed": seed, **stats})
        (tmp / MEMBERS_FILE).write_text(json.dumps(members, indent=1))
        result.metrics = measure_members(cfg, reward_dir, [m for m in trained if m[0] != HELDOUT], members, test)
        result.seconds = time.perf_counter() - started
        result.metrics["ensemble/seconds"] = result.seconds
    return result


def measure_members(cfg: PipelineConfig, reward_dir: Path, trained: list, members: list[dict],
                    test: list[dict]) -> dict[str, float]:
    """How much the members (the proxy included) agree on the held-out pairs, and how accurate each is."""
    tokenizer, proxy = load_reward_model(str(reward_dir))
    rows, _, _ = fit_to_length(test, tokenizer, cfg.reward.max_length, cfg.reward.keep_prompt_head)
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    scores, accuracies = [], []
    for model, tok in [(proxy, tokenizer)] + [(m[2], m[3]) for m in trained]:
        s = score_texts(model, tok, prompts, responses, max_length=cfg.reward.max_length)
        scores.append((s - s.mean()) / s.std().clamp_min(1e-6))
        accuracies.append(float((s[: len(rows)] > s[len(rows):]).float().mean()))
    stacked = torch.stack(scores)  # (k, 2 * n_pairs)
    return {
        "ensemble/members": float(len(scores)),
        "ensemble/member_corr": mean_pairwise_corr(stacked),
        "ensemble/member_spread": float(stacked.std(dim=0, correction=0).mean()),
        "ensemble/member_accuracy_min": min(accuracies),
        "ensemble/member_accuracy_mean": sum(accuracies) / len(accuracies),
    }
