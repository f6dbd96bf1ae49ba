"""Gao et al.'s over-optimisation law for RL: gold reward gained against d = sqrt(KL(pi || pi_init)).

Usage:
    from minirlhf.gao import d_star, fit_gao_rl, gao_rl
    alpha, beta, r2 = fit_gao_rl(d=[0.5, 1.0, 2.0], gain=[0.3, 0.5, 0.4])
    curve = gao_rl(np.linspace(0, 3, 100), alpha, beta)       # R(d) on a grid, R(0) = 0
    peak = d_star(alpha, beta)                                 # where R(d) peaks, None if it never turns down

Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model Overoptimization" (arXiv:2210.10760), Eq. 2: for RL
the gold reward gained over the initial policy follows R(d) = d (alpha - beta log d); best-of-n follows
d (alpha - beta d) and is not used here. Pure numpy: the sweep stage (minirlhf/sweep.py) fits it, the figures
(minirlhf/plots.py) and the dashboard's sweep page (dashboards/app.py) draw it.
"""

from __future__ import annotations

import math

import numpy as np


def gao_rl(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """R(d) = d (alpha - beta log d), with R(0) = 0 (the limit)."""
    d = np.asarray(d, dtype=float)
    safe = np.where(d > 0, d, 1.0)  # log(0) would warn inside np.where even where it is not picked
    return np.where(d > 0, d * (alpha - beta * np.log(safe)), 0.0)


def fit_gao_rl(d: list[float], gain: list[float]) -> tuple[float, float, float]:
    """Least-squares fit of R(d) = alpha d - beta d log d (linear in alpha, beta).
    Returns (alpha, beta, r2); r2 is the share of the gains' variance around their mean that the fit explains."""
    d_arr, gain_arr = np.asarray(d, dtype=float), np.asarray(gain, dtype=float)
    if len(d_arr) < 2 or np.any(d_arr <= 0):
        raise ValueError(f"the fit needs at least two points with d > 0, got d={list(d)}")
    design = np.stack([d_arr, -d_arr * np.log(d_arr)], axis=1)  # (points, 2): columns multiply alpha, beta
    (alpha, beta), *_ = np.linalg.lstsq(design, gain_arr, rcond=None)
    residual = gain_arr - design @ np.array([alpha, beta])
    total = float(((gain_arr - gain_arr.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else float("nan")
    return float(alpha), float(beta), r2


def d_star(alpha: float, beta: float) -> float | None:
    """Where R(d) peaks: dR/dd = alpha - beta (log d + 1) = 0. Only a maximum when beta > 0."""
    return math.exp(alpha / beta - 1) if beta > 0 and alpha / beta - 1 < 50 else None
