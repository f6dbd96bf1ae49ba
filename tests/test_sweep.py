"""The over-optimisation sweep: the Gao et al. (2022) fit against naive references (fast), and the sweep flow
on the tiny config against a temporary Prefect server (e2e): shared stages computed once, one PPO run per
kl_coef, the fit and the figure in the store."""

import json
from pathlib import Path
import math

import numpy as np
import pytest

from minirlhf.config import load_config
from minirlhf.gao import d_star, fit_gao_rl, gao_rl
from minirlhf.sweep import fit_points, sweep_metrics, sweep_point
from tests.test_ppo import TINY


def test_fit_recovers_alpha_and_beta_of_exact_points():
    d = [0.3, 0.7, 1.2, 2.0, 3.1]
    gain = [x * (0.8 - 0.5 * math.log(x)) for x in d]
    alpha, beta, r2 = fit_gao_rl(d, gain)
    assert alpha == pytest.approx(0.8, abs=1e-9) and beta == pytest.approx(0.5, abs=1e-9) and r2 == pytest.approx(1.0)


def test_fit_matches_the_normal_equations_on_noisy_points():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.2, 3.0, 12)
    gain = d * (0.4 - 0.2 * np.log(d)) + rng.normal(0, 0.05, 12)
    # Naive reference: minimise sum (g - a d + b d log d)^2 by the 2x2 normal equations, by hand.
    x1, x2 = d, -d * np.log(d)
    s11, s12, s22 = (x1 * x1).sum(), (x1 * x2).sum(), (x2 * x2).sum()
    t1, t2 = (x1 * gain).sum(), (x2 * gain).sum()
    det = s11 * s22 - s12 * s12
    alpha_ref, beta_ref = (t1 * s22 - t2 * s12) / det, (s11 * t2 - s12 * t1) / det
    alpha, beta, r2 = fit_gao_rl(list(d), list(gain))
    assert alpha == pytest.approx(alpha_ref, rel=1e-9) and beta == pytest.approx(beta_ref, rel=1e-9)
    residual = gain - (alpha * x1 + beta * x2)
    assert r2 == pytest.approx(1 - (residual**2).sum() / ((gain - gain.mean()) ** 2).sum())


def test_peak_of_the_fitted_curve():
    alpha, beta = 0.8, 0.5
    peak = d_star(alpha, beta)
    grid = np.linspace(0.01, 10, 100001)
    assert peak == pytest.approx(grid[np.argmax(gao_rl(grid, alpha, beta))], abs=1e-3)
    assert d_star(0.8, -0.1) is None  # beta <= 0: R(d) never turns down
    assert gao_rl(np.array([0.0]), alpha, beta)[0] == 0.0


def test_fit_refuses_too_few_or_zero_distance_points():
    with pytest.raises(ValueError, match="at least two points"):
        fit_gao_rl([1.0], [0.2])
    with pytest.raises(ValueError, match="d > 0"):
        fit_gao_rl([0.0, 1.0], [0.0, 0.2])


def test_sweep_point_gains_are_against_sft_and_gold_is_optional():
    metrics = {"eval/ppo/kl": 4.0, "eval/ppo/gold_reward": 0.5, "eval/sft/gold_reward": -0.1,
               "eval/ppo/proxy_reward": 2.0, "eval/sft/proxy_reward": 0.5}
    p = sweep_point(0.05, metrics)
    assert p["d"] == 2.0 and p["gold_gain"] == pytest.approx(0.6) and p["proxy_gain"] == pytest.approx(1.5)
    hh = sweep_point(0.05, {k: v for k, v in metrics.items() if "gold" not in k})  # HH data: no gold annotator
    assert "gold_gain" not in hh and "proxy_gain" in hh
    fits = fit_points([hh, sweep_point(0.2, {**metrics, "eval/ppo/kl": 1.0})])
    assert set(fits) == {"proxy"}


def test_sweep_metrics_rows_put_points_at_their_index_and_fits_at_step_zero():
    points = [{"kl_coef": 0.2, "kl": 1.0, "d": 1.0, "gold_gain": 0.3},
              {"kl_coef": 0.05, "kl": 4.0, "d": 2.0, "gold_gain": 0.1}]
    rows = sweep_metrics(points, {"gold": {"alpha": 0.3, "beta": 0.4, "r2": 1.0, "d_star": float("inf")}})
    assert rows[0] == (0, {"sweep/kl_coef": 0.2, "sweep/kl": 1.0, "sweep/d": 1.0, "sweep/gold_gain": 0.3})
    assert rows[1][0] == 1 and rows[1][1]["sweep/kl_coef"] == 0.05
    assert rows[2] == (0, {"sweep/fit/gold/alpha": 0.3, "sweep/fit/gold/beta": 0.4, "sweep/fit/gold/r2": 1.0})


@pytest.mark.e2e
def test_sweep_flow_shares_the_cached_stages_and_stores_points_fit_and_figure(tmp_path, prefect_harness):
    from flows.sweep import overoptimization_sweep
    from minirlhf.store import Store

    cfg = load_config(None, TINY + [f"output_dir={tmp_path / 'out'}"])
    result = overoptimization_sweep(cfg, kl_coefs=[0.5, 0.01])
    again = overoptimization_sweep(cfg, kl_coefs=[0.5, 0.01])
    store = Store.for_output_dir(cfg.output_dir)
    first, second = store.query("select run_id from runs order by started_at")["run_id"]
    stages = store.query("select run_id, stage, cache_hit from stage_runs order by started_at")
    ran = stages[stages.run_id == first]
    # data, SFT and the reward model once; PPO and evaluation once per kl_coef; then the fit.
    assert list(ran.stage) == ["data", "sft", "reward", "ppo", "eval", "ppo", "eval", "sweep"]
    assert not ran.cache_hit.any()
    assert stages[stages.run_id == second].cache_hit.all()  # the rerun computes nothing
    points = store.query("select * from v_sweep_points where run_id = ? order by point", [first])
    assert list(points.kl_coef) == [0.5, 0.01]
    assert (points.d == np.sqrt(points.kl.clip(lower=0))).all()
    assert points.kl.iloc[1] > points.kl.iloc[0]  # a weaker KL penalty lets PPO move further from SFT
    fits = store.query("select * from v_sweep_fits where run_id = ? order by reward", [first])
    assert list(fits.reward) == ["gold", "proxy"] and fits.alpha.notna().all() and fits.beta.notna().all()
    assert json.loads((result.path(cfg.output_dir) / "fit.json").read_text())["gold"]["alpha"] == pytest.approx(
        fits.alpha.iloc[0])
    assert again.output_dir == result.output_dir and again.sha256 == result.sha256
    sweeps = store.query("select path from artifacts where kind = 'sweep'")
    assert len(sweeps) == 2 and sweeps.path.nunique() == 1  # computed once, reused by the rerun
    with open(Path(sweeps.path.iloc[0]) / "overoptimization.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
