"""Comparing the policy methods over seeds: gold and proxy reward, KL, gains and win rates with 95% intervals.

Usage:
    from minirlhf.compare import run_compare, compare_rows, seed_config
    cfg_1 = seed_config(cfg, 1)                      # every method from seed 1, RLOO and GRPO at PPO's episodes
    result = run_compare(cfg, points, out_dir)       # points: [{seed, eval_dir, seconds: {method: s}}]
    rows = compare_rows(load_scores([eval_dir_seed1, eval_dir_seed2, eval_dir_seed3]))     # pure

Each point is one evaluation of SFT and every method (PPO, DPO, RLOO, GRPO) trained with one method seed
(`<method>.seed`), all answering the same held-out prompts with the same sampling seed. A method's number is its
mean over seeds and prompts; its interval is the paired two-level bootstrap of minirlhf.stats (seeds, then
prompts, both policies' scores taken at the same prompts): it covers the luck of training as well as the choice
of prompts. Gains and win rates are against SFT on the same prompts (and, for the methods, against each other).

Store (stage 'compare'; view v_compare): `compare/<policy>/<metric>` with `_low` and `_high` at step 0, metric one
of gold_reward, proxy_reward, kl, gold_gain, proxy_gain, win_rate_gold, win_rate_proxy, seconds, episodes; and
`compare/<a>_vs_<b>/<win_rate_gold|gold_gain>` for each pair of methods.
"""

from __future__ import annotations

import json
import statistics
import time
from itertools import combinations
from pathlib import Path

from minirlhf.config import PipelineConfig, build_config
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output
from minirlhf.stats import Interval, first_mean, mean_gain, paired_bootstrap, win_rate

BASELINE = "sft"
METHODS = ("ppo", "dpo", "rloo", "grpo")
METRICS = ("gold_reward", "proxy_reward", "kl")
RESULTS = "compare.json"


def load_scores(eval_dirs: list[Path]) -> dict[str, dict[str, list[list[float]]]]:
    """{policy: {metric: (seeds, prompts) scores}} from each seed's evaluation (samples.json), prompts aligned by
    prompt_id. Every evaluation must hold the same prompts and the same policies."""
    scores: dict[str, dict[str, list[list[float]]]] = {}
    prompt_ids = None
    for eval_dir in eval_dirs:
        samples = json.loads((Path(eval_dir) / "samples.json").read_text())
        for policy, rows in samples.items():
            ids = [r["prompt_id"] for r in rows]
            if prompt_ids is None:
                prompt_ids = ids
            if ids != prompt_ids:
                raise ValueError(f"{eval_dir}: policy {policy} answered other prompts than the first evaluation; "
                                 "compare evaluations of one eval config (eval.n_prompts, data)")
            for metric in METRICS:
                values = [r.get(metric) for r in rows]
                if all(v is not None for v in values):
                    scores.setdefault(policy, {}).setdefault(metric, []).append([float(v) for v in values])
    policies = {p: {m: len(v) for m, v in ms.items()} for p, ms in scores.items()}
    if len({n for ms in policies.values() for n in ms.values()}) > 1:
        raise ValueError(f"the evaluations do not all hold the same policies and metrics: {policies}")
    return scores


def _interval(name: str, ci: Interval) -> dict[str, float]:
    return {name: ci.value, f"{name}_low": ci.low, f"{name}_high": ci.high}


def compare_rows(scores: dict, n_resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """{policy or 'a_vs_b': {metric, metric_low, metric_high}} over the scores of load_scores."""
    rows: dict[str, dict[str, float]] = {}
    base = scores[BASELINE]
    for policy, by_metric in scores.items():
        row: dict[str, float] = {}
        for metric, values in by_metric.items():
            row |= _interval(metric, paired_bootstrap(values, values, first_mean, n_resamples, seed=seed))
        if policy != BASELINE:
            for reward, label in (("gold_reward", "gold"), ("proxy_reward", "proxy")):
                if reward in by_metric and reward in base:
                    a, b = by_metric[reward], base[reward]
                    row |= _interval(f"{label}_gain", paired_bootstrap(a, b, mean_gain, n_resamples, seed=seed))
                    row |= _interval(f"win_rate_{label}", paired_bootstrap(a, b, win_rate, n_resamples, seed=seed))
        rows[policy] = row
    methods = [p for p in scores if p != BASELINE]
    for a, b in combinations(methods, 2):
        if "gold_reward" in scores[a] and "gold_reward" in scores[b]:
            x, y = scores[a]["gold_reward"], scores[b]["gold_reward"]
            rows[f"{a}_vs_{b}"] = (_interval("win_rate_gold", paired_bootstrap(x, y, win_rate, n_resamples, seed=seed))
                                   | _interval("gold_gain", paired_bootstrap(x, y, mean_gain, n_resamples, seed=seed)))
    return rows


def seed_config(config: PipelineConfig, seed: int, vary_all: bool = False,
                equal_episodes: bool = True) -> PipelineConfig:
    """One seed of the comparison: every method (GRPO switched on) trained from `seed`, evaluated on the same
    prompts. SFT and the reward model stay those of `config.seed` unless `vary_all` (then the top-level seed is
    `seed` too, and they are retrained). `equal_episodes`: RLOO and GRPO get as many optimiser steps as it takes
    to sample as many episodes as PPO (steps x batch size)."""
    tree = config.model_dump(mode="json")
    for method in METHODS:
        tree[method]["seed"] = seed
    tree["grpo"]["enabled"] = True
    if vary_all:
        tree["seed"] = seed
    if equal_episodes:
        ppo_episodes = config.ppo.steps * config.ppo.batch_size
        for method in ("rloo", "grpo"):
            tree[method]["steps"] = max(1, round(ppo_episodes / tree[method]["batch_size"]))
    return build_config(tree, source=f"comparison seed {seed}{' (SFT and reward model too)' if vary_all else ''}")


def episodes(cfg: PipelineConfig) -> dict[str, int]:
    """The training budget of each method in sampled episodes (RL methods) or preference pairs seen (DPO)."""
    return {"ppo": cfg.ppo.steps * cfg.ppo.batch_size, "rloo": cfg.rloo.steps * cfg.rloo.batch_size,
            "grpo": cfg.grpo.steps * cfg.grpo.batch_size, "dpo": cfg.dpo.max_steps * cfg.dpo.batch_size}


def run_compare(cfg: PipelineConfig, points: list[dict], out_dir: Path, logger: MetricLogger | None = None,
                n_resamples: int = 2000) -> StageResult:
    """points: one per seed, {seed, eval_dir, seconds: {method: training seconds}}."""
    logger = logger or NullLogger()
    started = time.perf_counter()
    points = sorted(points, key=lambda p: p["seed"])
    rows = compare_rows(load_scores([p["eval_dir"] for p in points]), n_resamples, seed=cfg.seed)
    budget = episodes(cfg)
    for policy, row in rows.items():
        seconds = [p["seconds"][policy] for p in points if policy in p.get("seconds", {})]
        if seconds:
            row["seconds"] = statistics.fmean(seconds)
        if policy in budget:
            row["episodes"] = float(budget[policy])
    metrics = {f"compare/{policy}/{name}": value for policy, row in rows.items() for name, value in row.items()}
    metrics["compare/n_seeds"] = float(len(points))
    logger.log_metrics(metrics, step=0)
    out = StageResult("compare", metrics=metrics)
    with stage_output(out_dir, out) as tmp:
        (tmp / RESULTS).write_text(json.dumps({"seeds": [p["seed"] for p in points], "rows": rows}, indent=1))
        out.seconds = time.perf_counter() - started
    return out
