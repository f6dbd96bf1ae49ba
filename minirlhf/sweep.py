"""The over-optimisation sweep: PPO at several KL coefficients, gold and proxy reward against d = sqrt(KL).

Usage:
    from minirlhf.sweep import fit_points, point_config, run_sweep
    fits = fit_points([{"d": 0.5, "gold_gain": 0.3}, {"d": 1.0, "gold_gain": 0.5}, {"d": 2.0, "gold_gain": 0.4}])
    cfg_005 = point_config(cfg, 0.05)                                       # one point's config: PPO at kl_coef 0.05
    result = run_sweep(cfg, {0.2: eval_dir_a, 0.05: eval_dir_b}, out_dir)   # points.json, fit.json, the figure
    spec = minirlhf.pipeline.plan_sweep(cfg, {0.2: eval_a, 0.05: eval_b})   # as a stage: key, then run_stage(spec, ...)

Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model Overoptimization", measure how far a policy has
moved from its initialisation by d = sqrt(KL(pi || pi_init)) and find that, for RL, the gold reward gained over
the initial policy follows R(d) = d (alpha - beta log d) (their Eq. 2; best-of-n follows d (alpha - beta d)).
The proxy (the reward model the policy optimises) keeps rising with d while the gold reward peaks at
d* = exp(alpha / beta - 1) and then falls: the over-optimisation the sweep makes visible. The formulas are in
minirlhf/gao.py, the figure (the report's, drawn from this stage's points) in minirlhf/plots.py.

Here each point is one PPO run (one `ppo.kl_coef`, everything else shared and reused from the cache), evaluated
against SFT on the same held-out prompts: d = sqrt(eval/ppo/kl), gain = eval/ppo/<reward> - eval/sft/<reward>.
Store metrics (stage 'sweep'; views v_sweep_points, v_sweep_fits): per point i at step i `sweep/kl_coef`,
`sweep/kl`, `sweep/d`, `sweep/gold_reward`, `sweep/proxy_reward`, `sweep/gold_gain`, `sweep/proxy_gain`; at
step 0 `sweep/fit/<gold|proxy>/<alpha|beta|r2|d_star>`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pandas as pd

from minirlhf.config import BASELINES, PipelineConfig, build_config
from minirlhf.gao import d_star, fit_gao_rl
from minirlhf.plots import plot_sweep
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output

log = logging.getLogger("minirlhf")

FIGURE = "overoptimization.png"
REWARDS = ("gold", "proxy")


def sweep_point(kl_coef: float, eval_metrics: dict[str, float]) -> dict[str, float]:
    """One PPO run's point: its KL to SFT, d, and gold/proxy reward with their gains over SFT."""
    kl = eval_metrics["eval/ppo/kl"]
    point = {"kl_coef": kl_coef, "kl": kl, "d": math.sqrt(max(kl, 0.0))}
    for reward in REWARDS:
        value, sft = eval_metrics.get(f"eval/ppo/{reward}_reward"), eval_metrics.get(f"eval/sft/{reward}_reward")
        if value is not None and sft is not None:
            point |= {f"{reward}_reward": value, f"{reward}_gain": value - sft, f"sft_{reward}_reward": sft}
    return point


def fit_points(points: list[dict]) -> dict[str, dict[str, float]]:
    """{'gold': {alpha, beta, r2, d_star}, 'proxy': {...}} over the points with d > 0 (gold absent on HH data)."""
    fits = {}
    for reward in REWARDS:
        usable = [p for p in points if p["d"] > 0 and f"{reward}_gain" in p]
        if len(usable) < 2:
            continue
        alpha, beta, r2 = fit_gao_rl([p["d"] for p in usable], [p[f"{reward}_gain"] for p in usable])
        fits[reward] = {"alpha": alpha, "beta": beta, "r2": r2}
        peak = d_star(alpha, beta)
        if peak is not None:
            fits[reward]["d_star"] = peak
    return fits


def draw_sweep(points: list[dict], fits: dict[str, dict[str, float]], path: Path) -> Path:
    """Gold and proxy gain over SFT against d with the fitted curves: the report's figure, drawn from this
    stage's points instead of the store's views."""
    points_frame = pd.DataFrame(points).reindex(columns=["kl_coef", "d", "gold_gain", "proxy_gain"])
    fits_frame = pd.DataFrame([{"reward": r, **f} for r, f in fits.items()],
                              columns=["reward", "alpha", "beta", "r2", "d_star"])
    return plot_sweep(points_frame, fits_frame, path)


def sweep_metrics(points: list[dict], fits: dict[str, dict[str, float]]) -> list[tuple[int, dict[str, float]]]:
    """The store rows: (step, metrics) per point, then the fits at step 0."""
    rows = []
    for i, p in enumerate(points):
        keys = ("kl_coef", "kl", "d", "gold_reward", "proxy_reward", "gold_gain", "proxy_gain")
        rows.append((i, {f"sweep/{k}": p[k] for k in keys if k in p}))
    fit_row = {f"sweep/fit/{reward}/{k}": v for reward, f in fits.items() for k, v in f.items() if math.isfinite(v)}
    return rows + [(0, fit_row)]


def run_sweep(cfg: PipelineConfig, evals: dict[float, Path], out_dir: Path,
              logger: MetricLogger | None = None) -> StageResult:
    """Fit and draw the sweep from the eval stage outputs of each PPO run, keyed by its kl_coef."""
    logger = logger or NullLogger()
    started = time.perf_counter()
    points = []
    for kl_coef, eval_dir in sorted(evals.items(), reverse=True):  # strongest KL penalty first: d grows along the list
        points.append(sweep_point(kl_coef, json.loads((Path(eval_dir) / "metrics.json").read_text())))
    fits = fit_points(points)
    history = sweep_metrics(points, fits)
    for step, metrics in history:
        logger.log_metrics(metrics, step=step)
    for reward, f in fits.items():
        log.info("sweep: %s reward R(d) = d(%.3f - %.3f log d), R2 %.2f, peak at d=%s", reward, f["alpha"], f["beta"],
                 f["r2"], f"{f['d_star']:.2f}" if "d_star" in f else "none")
    summary = {f"sweep/fit/{reward}/{k}": v for reward, f in fits.items() for k, v in f.items()}
    result = StageResult("sweep", metrics={**summary, "sweep/points": float(len(points))},
                         history=[{"step": step, **metrics} for step, metrics in history])
    with stage_output(out_dir, result) as tmp:
        (tmp / "points.json").write_text(json.dumps(points, indent=1))
        (tmp / "fit.json").write_text(json.dumps(fits, indent=1))
        draw_sweep(points, fits, tmp / FIGURE)
        result.seconds = time.perf_counter() - started
    return result


def point_config(config: PipelineConfig, kl_coef: float) -> PipelineConfig:
    """The pipeline config of one sweep point: its kl_coef, and no baselines in its evaluation (they do not
    depend on kl_coef)."""
    tree = config.model_dump(mode="json")
    tree["ppo"]["kl_coef"] = kl_coef
    for baseline in BASELINES:
        tree[baseline]["enabled"] = False
    return build_config(tree, source=f"sweep point kl_coef={kl_coef}")
