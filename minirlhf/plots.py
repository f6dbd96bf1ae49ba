"""The report's figures: one function per PNG, each drawn from data frames the caller read from the store.

Usage:
    from minirlhf.plots import plot_ppo_curves, plot_sweep
    plot_ppo_curves(curves, Path("ppo_curves.png"))   # curves: the rows of minirlhf/sql/report/ppo_curves.sql
    plot_sweep(points, fits, Path("sweep.png"))        # points: kl_coef, d, gold_gain, proxy_gain
                                                       # fits: reward, alpha, beta, r2, d_star

Callers: minirlhf/report.py (every figure of the report) and minirlhf/sweep.py (the sweep stage's own figure, the
same picture from its points). This module reads nothing and imports no other minirlhf module but gao.py, so
both can use it without importing each other. Figures use matplotlib's object API (`Figure`, no pyplot): nothing
touches the global backend or leaks figures; PNGs render on the Agg canvas.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from minirlhf.gao import gao_rl

POLICY_ORDER = ("sft", "ppo", "dpo", "rloo", "grpo")  # the baseline first; any other policy follows by name


# ---- the reward model ------------------------------------------------------------------------------------
def plot_accuracy_by_intent(by_intent: pd.DataFrame, values: dict, path: Path) -> Path:
    """Held-out accuracy per prompt intent, against the overall accuracy, the label ceiling and chance."""
    fig = new_figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(by_intent["intent"], by_intent["accuracy"], color="tab:blue", alpha=0.8)
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    for name, style, label in (("reward/accuracy", "-", "overall accuracy"),
                               ("reward/label_ceiling", "--", "label ceiling")):
        if name in values and _is_number(values[name]):
            ax.axhline(values[name], color="black", ls=style, lw=1, label=f"{label} {values[name]:.2f}")
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance 0.50")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("prompt intent")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_title("Reward model: held-out accuracy per intent")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_reward_vs_length(samples: pd.DataFrame, path: Path) -> Path:
    """Proxy reward against response length per policy, with Pearson r in the legend: the length bias."""
    fig = new_figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for policy, rows in _by_policy(samples):
        x, y = rows["response_words"].to_numpy(float), rows["proxy_reward"].to_numpy(float)
        keep = np.isfinite(x) & np.isfinite(y)
        label = policy
        if keep.sum() >= 3 and np.ptp(x[keep]) > 0 and np.ptp(y[keep]) > 0:
            label += f" (r = {np.corrcoef(x[keep], y[keep])[0, 1]:+.2f})"
        jitter = (np.arange(len(x)) % 5 - 2) * 0.06  # lengths are integers: spread the overlapping points a little
        ax.scatter(x + jitter, y, s=16, alpha=0.6, color=_policy_color(policy), label=label)
    ax.set_xlabel("response length (words)")
    ax.set_ylabel("proxy reward (reward-model score)")
    ax.set_title("Proxy reward against response length, evaluation samples")
    ax.legend(title="policy (Pearson r)", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---- training curves -------------------------------------------------------------------------------------
def plot_ppo_curves(curves: pd.DataFrame, path: Path) -> Path:
    """Proxy reward, gold reward and KL per step; a line per attempt, a dashed rule where a retry resumed."""
    panels = [("proxy_reward", "proxy reward (RM score)"), ("gold_reward", "gold reward"), ("kl", "KL(policy || SFT)")]
    fig = new_figure(figsize=(12, 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), sharex=True)
    groups = list(curves.groupby(["attempt", "stage_run_id"], sort=False))
    for ax, (column, label) in zip(axes, panels):
        for i, ((attempt, _), c) in enumerate(groups):
            color = f"C{i % 10}"
            ax.plot(c["step"], c[column], marker="o", ms=3, color=color, label=f"attempt {int(attempt)}")
            resumed = c["resumed_from_step"].iloc[0]
            if _is_number(resumed) and resumed > 0:
                ax.axvline(resumed, color=color, ls="--", lw=1,
                           label=f"attempt {int(attempt)} resumed at step {int(resumed)}")
        if curves[column].isna().all():
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", color="grey")
        ax.set_title(label)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over the batch")
    axes[0].legend(fontsize=8)
    fig.suptitle("PPO training curves")
    return _save(fig, path)


def plot_stage_curves(stage: str, rows: pd.DataFrame, names: list[str], path: Path) -> Path:
    """One panel per metric name (rows: attempt, stage_run_id, step, name, value), a line per attempt."""
    cols = min(3, len(names))
    n_rows = math.ceil(len(names) / cols)
    fig = new_figure(figsize=(4 * cols, 3.2 * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        for i, ((attempt, _), c) in enumerate(
                rows[rows["name"] == name].groupby(["attempt", "stage_run_id"], sort=False)):
            ax.plot(c["step"], c["value"], marker="o", ms=3, color=f"C{i % 10}", label=f"attempt {int(attempt)}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{stage}: training curves")
    return _save(fig, path)


# ---- policy comparison -----------------------------------------------------------------------------------
def plot_policy_rewards(table: pd.DataFrame, path: Path) -> Path:
    """Gold and proxy reward side by side, one pair of bars per policy (rows in the table's order)."""
    fig = new_figure(figsize=(max(5, 1.4 * len(table) + 3), 3.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(table))
    width = 0.38
    for offset, column, color, label in ((-width / 2, "gold_reward", "tab:blue", "gold reward"),
                                         (width / 2, "proxy_reward", "tab:orange", "proxy reward (RM)")):
        values = table[column].to_numpy(float)
        bars = ax.bar(x + offset, np.nan_to_num(values), width, color=color, label=label)
        ax.bar_label(bars, labels=[f"{v:.2f}" if np.isfinite(v) else "n/a" for v in values], fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.margins(y=0.15)  # room for the value labels
    ax.set_xticks(x, table["policy"])
    ax.set_xlabel("policy")
    ax.set_ylabel("mean reward on the evaluation prompts")
    ax.set_title("Gold and proxy reward per policy")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# ---- the over-optimisation sweep -------------------------------------------------------------------------
def plot_sweep(points: pd.DataFrame, fits: pd.DataFrame, path: Path) -> Path:
    """Gold and proxy gain over SFT against d, each point labelled with its kl_coef, with the fitted R(d) of
    Gao et al. (2022) (minirlhf/gao.py) and the gold peak d*."""
    fig = new_figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    d_max = float(np.nanmax(points["d"].to_numpy(float))) if points["d"].notna().any() else 1.0
    grid = np.linspace(1e-4, max(d_max, 1e-3) * 1.15, 200)
    fit_of = {r["reward"]: r for _, r in fits.iterrows()}
    for reward, color, marker in (("gold", "tab:blue", "o"), ("proxy", "tab:orange", "s")):
        shown = points[points[f"{reward}_gain"].notna() & points["d"].notna()]
        if shown.empty:
            continue
        ax.scatter(shown["d"], shown[f"{reward}_gain"], color=color, marker=marker, zorder=3,
                   label=f"{reward} gain (one PPO run)")
        for _, p in shown.iterrows():
            ax.annotate(f"{p['kl_coef']:g}", (p["d"], p[f"{reward}_gain"]), textcoords="offset points",
                        xytext=(5, 4 if reward == "proxy" else -11), fontsize=8, color=color)
        fit = fit_of.get(reward)
        if fit is not None and _is_number(fit["alpha"]) and _is_number(fit["beta"]):
            sign = "−" if fit["beta"] >= 0 else "+"
            r2 = f"{fit['r2']:.2f}" if _is_number(fit["r2"]) else "—"
            ax.plot(grid, gao_rl(grid, fit["alpha"], fit["beta"]), color=color, alpha=0.8,
                    label=f"{reward} fit: d({fit['alpha']:.3g} {sign} {abs(fit['beta']):.3g}·log d), R² {r2}")
            if reward == "gold" and _is_number(fit["d_star"]) and fit["d_star"] <= grid[-1]:
                ax.axvline(fit["d_star"], color=color, ls=":", lw=1, label=f"gold peak d* = {fit['d_star']:.2f}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("d = sqrt(KL(PPO || SFT))")
    ax.set_ylabel("reward gained over SFT")
    ax.set_title("Over-optimisation sweep: gain against d (points labelled with ppo.kl_coef)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---- helpers ---------------------------------------------------------------------------------------------
def policy_rank(policy: str) -> tuple[int, str]:
    """Sort key: the policies of POLICY_ORDER in that order, then any other by name (figures and tables agree)."""
    return (POLICY_ORDER.index(policy) if policy in POLICY_ORDER else len(POLICY_ORDER), str(policy))


def _by_policy(frame: pd.DataFrame):
    for policy in sorted(frame["policy"].unique(), key=policy_rank):
        yield policy, frame[frame["policy"] == policy]


def _policy_color(policy: str) -> str:
    """The same colour for a policy in every figure: C0.. by POLICY_ORDER, another policy by a hash of its name."""
    known = {p: f"C{i}" for i, p in enumerate(POLICY_ORDER)}
    return known.get(policy, f"C{len(POLICY_ORDER) + int(hashlib.sha256(str(policy).encode()).hexdigest(), 16) % 4}")


def _is_number(value) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(value))


# ---- reward hacking without gold ---------------------------------------------------------------------------
def plot_calibration(runs: list[dict], thresholds: dict[str, float], path: Path, max_runs: int = 6) -> Path:
    """One panel per PPO run (held-out seeds first): gold and proxy reward against step (left axis), each
    gold-free signal over its threshold (right axis; 1 = at threshold), the gold onset (red) and the warning's fire
    (green). runs: {name, steps, gold, proxy, signals: {name: [...]}, onset, fire}."""
    shown = runs[:max_runs]
    cols = min(3, len(shown)) or 1
    rows = math.ceil(len(shown) / cols) or 1
    fig = new_figure(figsize=(4.6 * cols, 3.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, run in zip(axes, shown):
        ax.plot(run["steps"], run["gold"], color="tab:orange", lw=1.5, label="gold")
        ax.plot(run["steps"], run["proxy"], color="tab:blue", lw=1.5, label="proxy")
        ax.set_xlabel("PPO step")
        ax.set_title(f"{run['name']}: onset {run.get('onset') or 'none'}, warning {run.get('fire') or 'none'}",
                     fontsize=9)
        right = ax.twinx()
        for name, values in sorted(run["signals"].items()):
            t = thresholds.get(name)
            if t and math.isfinite(t) and t > 0:
                right.plot(run["steps"], [v / t for v in values], lw=0.8, ls="--", label=f"{name} / threshold")
        right.axhline(1.0, color="grey", lw=0.6, ls=":")
        right.set_ylim(bottom=min(0.0, right.get_ylim()[0]))
        if run.get("onset") is not None:
            ax.axvline(run["onset"], color="tab:red", lw=1.2, label=f"gold onset {run['onset']}")
        if run.get("fire") is not None:
            ax.axvline(run["fire"], color="tab:green", lw=1.2, ls="-.", label=f"warning {run['fire']}")
        ax.grid(alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    handles = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            short = next((k for k in ("gold onset", "warning") if label.startswith(k)), label)  # no step numbers
            handles.setdefault(short, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=4, fontsize=7)
    fig.suptitle("Gold-free signals against the gold onset (right axis: signal / its threshold)")
    return _save(fig, path)


# ---- what the reward model computes ----------------------------------------------------------------------
def plot_probes(table: dict, path: Path) -> Path:
    """Held-out probe score against layer, one line per feature (accuracy for the binary features, R² for length),
    the dotted line of each its baseline (majority class; 0 for R²). table: minirlhf.interpret.probe_layers."""
    fig = new_figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    for i, (feature, row) in enumerate(table.items()):
        color = f"C{i}"
        label = f"{feature} ({'accuracy' if row['binary'] else 'R²'})"
        ax.plot(range(len(row["layers"])), row["layers"], marker="o", color=color, label=label)
        ax.axhline(row["baseline"], color=color, lw=0.7, ls=":")
    ax.set_xlabel("layer (0: embeddings)")
    ax.set_ylabel("held-out probe score")
    ax.set_title("Linear probes on the reward model's last-token hidden state")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_attribution(name: str, tokens: list, path: Path) -> Path:
    """One bar per response token: the score minus the score without that token (leave-one-out)."""
    fig = new_figure(figsize=(max(5, 0.45 * len(tokens) + 1.5), 3.2), layout="constrained")
    ax = fig.subplots()
    values = [float(v) for _, v in tokens]
    ax.bar(range(len(values)), values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
    ax.set_xticks(range(len(values)), [repr(t)[1:-1] for t, _ in tokens], rotation=70, fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("score - score without the token")
    ax.set_title(f"Token attribution: {name}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_word_effects(words: list[dict], path: Path, n: int = 12) -> Path:
    """The `n` words with the highest and the `n` with the lowest mean leave-one-out effect, as horizontal bars."""
    shown = words[:n] + [w for w in words[-n:] if w not in words[:n]]
    fig = new_figure(figsize=(6.5, max(3.0, 0.26 * len(shown) + 1.2)), layout="constrained")
    ax = fig.subplots()
    values = [w["mean_effect"] for w in shown]
    ax.barh(range(len(shown)), values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
    ax.set_yticks(range(len(shown)), [f"{w['word']} ({w['count']})" for w in shown], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("mean score - score without the word (occurrences)")
    ax.set_title("Words the reward model rewards and punishes most", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def new_figure(**kwargs):
    """A matplotlib Figure (object API, no pyplot). matplotlib is imported here, when a figure is drawn: a report
    whose figures are all up to date (report.py redraws only changed data) never loads it."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)  # a Figure without pyplot renders PNG on the Agg canvas
    return path
