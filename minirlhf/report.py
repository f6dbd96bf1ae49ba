"""The run report: one markdown file with PNG figures, drawn from the results store alone.

Usage:
    minirlhf report [--output-dir artifacts] [--run <run_id>] [--sweep-run <run_id>]   # -> artifacts/report/report.md
    from minirlhf.report import build_report, report_markdown
    path = build_report(Path("artifacts/rlhf.duckdb"), Path("artifacts/report"))        # report.md + figures/*.png
    text = report_markdown(Path("artifacts/rlhf.duckdb"), Path("artifacts/report"))     # the same markdown, returned
                                                                                        # (a Prefect markdown artifact)
Sections, in order: the run (stages, reuse), the reward model, training curves, the policy comparison, the
over-optimisation sweep, samples side by side, failure events. Every number comes from the store's SQL views
(minirlhf/store.py VIEWS, README "Dashboards and SQL") through the read-only `Store.query`, never from the files
of a stage: the report shows what was recorded. A section whose data the store lacks says so in one line and
names the command that records it. Policies are rows (sft, ppo, dpo, rloo, ...) and any stage with per-step
metrics gets its curves, so new stages show up without a change here.

Which run: `run_id`, else the newest run with a completed eval stage that is not a sweep. The sweep is its own
run (flows/sweep.py): `sweep_run_id`, else the newest sweep in the store. Figures are drawn with matplotlib's
object API (`Figure`, no pyplot), so nothing touches the global backend or leaks figures; PNGs render on Agg.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from minirlhf.store import Store

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
POLICY_ORDER = ("sft", "ppo", "dpo", "rloo", "grpo")  # the baseline first; any other policy follows by name
SEVERITY_ORDER = ("critical", "error", "warning", "info")
# The commands that record each section's data (said in the note of a section the store lacks).
RUN_HINT = "minirlhf run --config configs/demo.yaml"
SWEEP_HINT = "minirlhf sweep --config configs/demo.yaml"
RM_METRICS = {  # name in the store -> what it measures (minirlhf/reward.py)
    "reward/accuracy": "held-out pairwise accuracy against the (noisy) preference labels",
    "reward/label_ceiling": "how often the noiseless gold choice agrees with those labels: the best accuracy possible",
    "reward/accuracy_gold": "pairwise accuracy against the gold annotator's choice",
    "reward/margin": "mean score(chosen) - score(rejected)",
    "reward/length_corr": "Pearson correlation of the score with response length (words): a length bias",
    "reward/gold_corr": "Pearson correlation of the score with the gold score",
    "reward/filler_effect": "mean score change from appending the filler phrase (the spurious feature)",
    "reward/n_test_pairs": "held-out pairs scored",
}
COMPARISON_COLUMNS = {  # v_policy_comparison column -> header; all-empty columns are dropped
    "proxy_reward": "proxy reward", "gold_reward": "gold reward", "kl": "KL to SFT",
    "win_rate_gold": "win rate (gold)", "win_rate_proxy": "win rate (proxy)", "response_length": "length (words)",
    "eos_rate": "EOS rate", "distinct_1": "distinct-1", "distinct_2": "distinct-2",
    "refusal_rate_benign": "refusals (benign)", "refusal_rate_harmful": "refusals (harmful)",
}
# Per-step training metrics worth a panel, best first; bookkeeping ones (lr schedule, epoch, token counts) are not.
CURVE_PRIORITY = ("loss", "accurac", "margin", "reward", "kl", "entropy", "score")
CURVE_SECONDARY = ("max", "min", "std")  # reward/train_max_reward and the like: after the means they spread around
CURVE_SKIP = ("epoch", "learning_rate", "grad_norm", "num_tokens", "runtime", "per_second", "flos", "time/", "seconds")
MAX_CURVE_PANELS = 6
NON_TRAINING_STAGES = ("data", "ppo", "eval", "sweep")  # ppo has its own figure; the others have no steps
MAX_CELL_CHARS = 300


class ReportError(RuntimeError):
    """The store cannot give a report: it is missing, holds no run, or lacks the run asked for."""


# ---- entry points ----------------------------------------------------------------------------------------
def build_report(db_path: Path, out_dir: Path, run_id: str | None = None, sweep_run_id: str | None = None,
                 n_samples: int = 6) -> Path:
    """Write `<out_dir>/report.md` and its figures under `<out_dir>/figures/`; return report.md's path."""
    out_dir = Path(out_dir)
    text = report_markdown(db_path, out_dir, run_id=run_id, sweep_run_id=sweep_run_id, n_samples=n_samples)
    path = out_dir / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: a reader sees the old report or the new one, never half of one
    return path


def report_markdown(db_path: Path, out_dir: Path, run_id: str | None = None, sweep_run_id: str | None = None,
                    n_samples: int = 6) -> str:
    """The report as markdown; its figures are written to `<out_dir>/figures/` and linked by relative path.
    That folder belongs to the report: PNGs left there by an earlier report are removed first."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1 (got {n_samples})")
    db_path = Path(db_path)
    if not db_path.is_file():
        raise ReportError(f"no results store at {db_path}: run the pipeline first (`{RUN_HINT}` or `make demo`), "
                          "or point at one with --db / --output-dir")
    store = Store(db_path)
    run_id = pick_run(store, run_id)
    figures = Path(out_dir) / FIGURES_DIR
    figures.mkdir(parents=True, exist_ok=True)
    for old in figures.glob("*.png"):  # a section now empty must not leave last report's figure behind
        old.unlink()
    sections = [
        section_header(store, run_id, db_path),
        section_reward_model(store, run_id, figures),
        section_training_curves(store, run_id, figures),
        section_policy_comparison(store, run_id, figures),
        section_sweep(store, sweep_run_id, figures),
        section_samples(store, run_id, n_samples),
        section_failures(store, run_id),
    ]
    return "\n\n".join(s.strip() for s in sections) + "\n"


def pick_run(store: Store, run_id: str | None) -> str:
    """The run asked for (checked), else the newest with a completed eval stage, preferring runs that are not
    sweeps (a sweep run has one eval per kl_coef), then any run with an eval stage, then the newest run."""
    if run_id is not None:
        if store.query("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).empty:
            newest = store.query("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5")["run_id"].tolist()
            raise ReportError(f"no run {run_id!r} in {store.path}; newest runs: {', '.join(newest) or 'none'}")
        return run_id
    found = store.query("""
        SELECT r.run_id,
               bool_or(s.stage = 'eval' AND s.status = 'completed') AS eval_done,
               bool_or(s.stage = 'eval') AS has_eval,
               bool_or(s.stage = 'sweep') AS is_sweep
        FROM runs r LEFT JOIN stage_runs s USING (run_id)
        GROUP BY r.run_id, r.started_at
        ORDER BY coalesce(eval_done, false) AND NOT coalesce(is_sweep, false) DESC, coalesce(eval_done, false) DESC,
                 coalesce(has_eval, false) DESC, r.started_at DESC
        LIMIT 1""")
    if found.empty:
        raise ReportError(f"{store.path} holds no run yet: run the pipeline first (`{RUN_HINT}`)")
    return str(found["run_id"].iloc[0])


# ---- 1. the run ------------------------------------------------------------------------------------------
def section_header(store: Store, run_id: str, db_path: Path) -> str:
    run = store.query("SELECT *, json_extract_string(config, '$.name') AS config_name FROM v_runs WHERE run_id = ?",
                      [run_id]).iloc[0]
    duration = (f"{run['duration_s']:.1f} s" if _is_number(run["duration_s"])
                else f"not finished (status {run['status']})")
    rows = [("run id", f"`{run_id}`"), ("config", _text(run["config_name"])), ("status", _text(run["status"])),
            ("git sha", f"`{run['git_sha']}`" if _present(run["git_sha"]) else "—"),
            ("started (UTC)", f"{run['started_at']:%Y-%m-%d %H:%M:%S}"), ("duration", duration)]
    if _present(run["prefect_flow_run_id"]):
        rows.append(("Prefect flow run", f"`{run['prefect_flow_run_id']}`"))
    rows.append(("store", f"`{db_path}`"))
    lines = [f"# minirlhf report: run `{run_id[:12]}`",
             f"_Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the results store (read-only)._", "",
             _table(["", ""], rows), "", "## Stages", ""]
    stages = store.query("""
        SELECT s.stage, s.attempt, s.status, s.cache_hit, s.duration_s, s.cause,
               (SELECT any_value(o.source_run_id) FROM v_stage_outputs o
                WHERE o.run_id = s.run_id AND o.stage = s.stage AND o.reused) AS source_run_id
        FROM v_stage_runs s WHERE s.run_id = ? ORDER BY s.started_at""", [run_id])
    if stages.empty:
        return "\n".join(lines + ["_This run recorded no stage yet._"])
    table = []
    for s in stages.itertuples():
        if s.cache_hit:
            note = "output reused" + (f" (computed by run `{s.source_run_id[:12]}`)" if _present(s.source_run_id) else "")
        else:
            note = _cell(s.cause) if _present(s.cause) else ""
        table.append((s.stage, int(s.attempt), s.status, "yes" if s.cache_hit else "no",
                      _num(s.duration_s, 1), note))
    lines.append(_table(["stage", "attempt", "status", "reused", "seconds", "note"], table))
    return "\n".join(lines)


# ---- 2. the reward model ---------------------------------------------------------------------------------
def section_reward_model(store: Store, run_id: str, figures: Path) -> str:
    lines = ["## Reward model", ""]
    names = list(RM_METRICS)
    metrics = store.query(f"""
        SELECT name, arg_max(value, recorded_at) AS value FROM v_metrics
        WHERE run_id = ? AND stage = 'reward' AND name IN ({", ".join("?" * len(names))})
        GROUP BY name""", [run_id, *names])
    if metrics.empty:
        return "\n".join(lines + [_missing("reward-model metrics", f"{RUN_HINT} --stages reward")])
    values = dict(zip(metrics["name"], metrics["value"]))
    lines.append(_table(["metric", "value", "what it measures"],
                        [(f"`{n}`", _num(values[n], 0 if n == "reward/n_test_pairs" else 3), RM_METRICS[n])
                         for n in names if n in values]))
    if "reward/accuracy" in values and "reward/label_ceiling" in values:
        lines += ["", f"Accuracy {_num(values['reward/accuracy'])} against a label ceiling of "
                      f"{_num(values['reward/label_ceiling'])}: the labels are noisy, so no model can reach 1."]

    by_intent = store.query("""
        SELECT a.intent, arg_max(a.accuracy, s.started_at) AS accuracy  -- a retried stage: its newest attempt
        FROM v_rm_accuracy_by_intent a JOIN stage_runs s USING (stage_run_id)
        WHERE a.run_id = ? GROUP BY a.intent ORDER BY a.intent""", [run_id])
    if by_intent.empty:
        lines += ["", _missing("accuracy per intent", f"{RUN_HINT} --stages reward")]
    else:
        lines += ["", _image(plot_accuracy_by_intent(by_intent, values, figures / "rm_accuracy_by_intent.png"),
                             "reward-model accuracy per intent")]

    scored = _eval_samples(store, run_id)
    if scored.empty:
        lines += ["", _missing("proxy reward against response length (evaluation samples)", f"{RUN_HINT}")]
    else:
        lines += ["", _image(plot_reward_vs_length(scored, figures / "rm_reward_vs_length.png"),
                             "proxy reward against response length"),
                  "", "A steep slope for a policy whose gold reward does not rise with it is the length hack "
                      "(Singhal et al. 2023)."]
    return "\n".join(lines)


def plot_accuracy_by_intent(by_intent: pd.DataFrame, values: dict, path: Path) -> Path:
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(by_intent["intent"], by_intent["accuracy"], color="tab:blue", alpha=0.8)
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    for name, style, label in (("reward/accuracy", "-", "overall accuracy"), ("reward/label_ceiling", "--", "label ceiling")):
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
    fig = Figure(figsize=(7, 4.2), layout="constrained")
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


# ---- 3. training curves ----------------------------------------------------------------------------------
def section_training_curves(store: Store, run_id: str, figures: Path) -> str:
    lines = ["## Training curves", "", "### PPO", ""]
    curves = store.query("SELECT * FROM v_ppo_curves WHERE run_id = ? ORDER BY attempt, stage_run_id, step", [run_id])
    if curves.empty:
        lines.append(_missing("PPO curves", f"{RUN_HINT} --stages ppo"))
    else:
        reused = store.query("SELECT any_value(source_run_id) AS source FROM v_stage_outputs "
                             "WHERE run_id = ? AND stage = 'ppo' AND reused", [run_id])["source"]
        if len(reused) and _present(reused.iloc[0]):
            lines += [f"_PPO's output was reused: these curves were recorded by run `{reused.iloc[0][:12]}`._", ""]
        lines.append(_image(plot_ppo_curves(curves, figures / "ppo_curves.png"), "PPO curves"))
        rows = []
        for (attempt, _), c in curves.groupby(["attempt", "stage_run_id"], sort=False):
            last = c.iloc[-1]
            resumed = last["resumed_from_step"]
            rows.append((int(attempt), last["stage_status"], f"{int(c['step'].min())}–{int(c['step'].max())}",
                         int(resumed) if _is_number(resumed) and resumed > 0 else "—",
                         _num(last["proxy_reward"]), _num(last["gold_reward"]), _num(last["kl"])))
        lines += ["", _table(["attempt", "status", "steps", "resumed from step", "final proxy", "final gold",
                              "final KL"], rows)]

    other = store.query(f"""
        SELECT o.stage, o.attempt, m.stage_run_id, m.step, m.name, m.value
        FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
        WHERE o.run_id = ? AND o.stage NOT IN ({", ".join("?" * len(NON_TRAINING_STAGES))})
        ORDER BY o.stage, o.attempt, m.step""", [run_id, *NON_TRAINING_STAGES])
    for stage in sorted(other["stage"].unique(), key=_stage_order):
        rows = other[other["stage"] == stage]
        names = curve_metric_names(rows)
        if names:
            path = plot_stage_curves(stage, rows[rows["name"].isin(names)], names, figures / f"curves_{stage}.png")
            lines += ["", f"### {stage.upper() if len(stage) <= 4 else stage.capitalize()}", "",
                      _image(path, f"{stage} training curves")]
    if not {"dpo", "rloo"} & set(other["stage"]):
        lines += ["", _missing("DPO / RLOO baseline curves", f"{RUN_HINT} --set dpo.enabled=true --set rloo.enabled=true")]
    return "\n".join(lines)


def plot_ppo_curves(curves: pd.DataFrame, path: Path) -> Path:
    """Proxy reward, gold reward and KL per step; a line per attempt, a dashed rule where a retry resumed."""
    panels = [("proxy_reward", "proxy reward (RM score)"), ("gold_reward", "gold reward"), ("kl", "KL(policy || SFT)")]
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), sharex=True)
    groups = list(curves.groupby(["attempt", "stage_run_id"], sort=False))
    for ax, (column, label) in zip(axes, panels):
        for i, ((attempt, _), c) in enumerate(groups):
            color = f"C{i % 10}"
            ax.plot(c["step"], c[column], marker="o", ms=3, color=color, label=f"attempt {int(attempt)}")
            resumed = c["resumed_from_step"].iloc[0]
            if _is_number(resumed) and resumed > 0:
                ax.axvline(resumed, color=color, ls="--", lw=1, label=f"attempt {int(attempt)} resumed at step {int(resumed)}")
        if curves[column].isna().all():
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", color="grey")
        ax.set_title(label)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over the batch")
    axes[0].legend(fontsize=8)
    fig.suptitle("PPO training curves")
    return _save(fig, path)


def curve_metric_names(rows: pd.DataFrame) -> list[str]:
    """A stage's per-step metrics worth drawing: at least two steps, no bookkeeping, the most telling first."""
    steps = rows.groupby("name")["step"].nunique()
    names = [n for n, k in steps.items() if k >= 2 and not any(s in n for s in CURVE_SKIP)]
    def rank(name: str) -> tuple[bool, int, str]:
        first = next((i for i, key in enumerate(CURVE_PRIORITY) if key in name), len(CURVE_PRIORITY))
        return any(key in name for key in CURVE_SECONDARY), first, name

    return sorted(names, key=rank)[:MAX_CURVE_PANELS]


def plot_stage_curves(stage: str, rows: pd.DataFrame, names: list[str], path: Path) -> Path:
    cols = min(3, len(names))
    n_rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4 * cols, 3.2 * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        for i, ((attempt, _), c) in enumerate(rows[rows["name"] == name].groupby(["attempt", "stage_run_id"], sort=False)):
            ax.plot(c["step"], c["value"], marker="o", ms=3, color=f"C{i % 10}", label=f"attempt {int(attempt)}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{stage}: training curves")
    return _save(fig, path)


# ---- 4. policy comparison --------------------------------------------------------------------------------
def section_policy_comparison(store: Store, run_id: str, figures: Path) -> str:
    lines = ["## Policy comparison", ""]
    table = store.query("""
        SELECT p.* FROM v_policy_comparison p JOIN stage_runs s USING (stage_run_id)
        WHERE p.run_id = ?
        QUALIFY dense_rank() OVER (ORDER BY s.status = 'completed' DESC, s.started_at DESC) = 1""", [run_id])
    if table.empty:
        return "\n".join(lines + [_missing("policy evaluation", f"{RUN_HINT} --stages eval")])
    table = table.sort_values("policy", key=lambda s: s.map(_policy_rank)).reset_index(drop=True)
    columns = [c for c in COMPARISON_COLUMNS if table[c].notna().any()]
    rows = [[f"**{r['policy']}**"] + [_num(r[c], 1 if c == "response_length" else 3) for c in columns]
            for _, r in table.iterrows()]
    lines += ["Every policy answered the same held-out prompts with the same sampling seed; SFT is the baseline "
              "for KL and win rates.", "", _table(["policy"] + [COMPARISON_COLUMNS[c] for c in columns], rows), "",
              _image(plot_policy_rewards(table, figures / "policy_rewards.png"), "gold and proxy reward per policy")]
    return "\n".join(lines)


def plot_policy_rewards(table: pd.DataFrame, path: Path) -> Path:
    fig = Figure(figsize=(max(5, 1.4 * len(table) + 3), 3.8), layout="constrained")
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


# ---- 5. the over-optimisation sweep ----------------------------------------------------------------------
def section_sweep(store: Store, sweep_run_id: str | None, figures: Path) -> str:
    lines = ["## Over-optimisation sweep", ""]
    sweep = pick_sweep(store, sweep_run_id)
    if sweep is None:
        return "\n".join(lines + [_missing("KL sweep", SWEEP_HINT)])
    points = store.query("SELECT * FROM v_sweep_points WHERE stage_run_id = ? ORDER BY point",
                         [sweep["stage_run_id"]])
    fits = store.query("SELECT * FROM v_sweep_fits WHERE stage_run_id = ? ORDER BY reward = 'gold' DESC, reward",
                       [sweep["stage_run_id"]])
    lines += [f"Sweep run `{sweep['run_id'][:12]}` ({sweep['status']}, started {sweep['started_at']:%Y-%m-%d %H:%M} UTC): "
              f"one PPO run per `ppo.kl_coef`, each evaluated against SFT. d = sqrt(KL(PPO || SFT)); a gain is the "
              "policy's reward minus SFT's. Gao et al. (2022) find that for RL the gold gain follows "
              "R(d) = d(α − β·log d), peaking at d* = exp(α/β − 1), while the proxy keeps rising.", ""]
    lines += [_image(plot_sweep(points, fits, figures / "sweep.png"), "gain over SFT against d = sqrt(KL)"), ""]
    if fits.empty:
        lines.append("_No fit recorded (it needs at least two points with d > 0)._")
    else:
        rows = [(r["reward"], _num(r["alpha"], 4), _num(r["beta"], 4), _num(r["r2"], 3), _num(r["d_star"], 3),
                 _num(r["d_star"] ** 2, 3) if _is_number(r["d_star"]) else "—") for _, r in fits.iterrows()]
        lines.append(_table(["reward", "α", "β", "R²", "d* (peak)", "KL at d*"], rows))
    # What the detectors flagged in each point's evaluation (the eval stage of that kl_coef, in the sweep's run).
    flagged = store.query("""
        SELECT TRY_CAST(json_extract_string(s.config, '$.ppo.kl_coef') AS DOUBLE) AS kl_coef,
               string_agg(DISTINCT f.kind, ', ' ORDER BY f.kind) AS kinds
        FROM failure_events f JOIN stage_runs s USING (stage_run_id)
        WHERE s.run_id = ? AND s.stage = 'eval' GROUP BY ALL""", [sweep["run_id"]])
    kinds = dict(zip(flagged["kl_coef"], flagged["kinds"]))
    lines += ["", _table(["point", "kl_coef", "KL", "d", "gold", "proxy", "gold gain", "proxy gain", "flagged"],
                         [(int(p["point"]), f"{p['kl_coef']:g}" if _is_number(p["kl_coef"]) else "—", _num(p["kl"]),
                           _num(p["d"]), _num(p["gold_reward"]),
                           _num(p["proxy_reward"]), _num(p["gold_gain"]), _num(p["proxy_gain"]),
                           kinds.get(p["kl_coef"], "—"))
                          for _, p in points.iterrows()])]
    events = section_failures(store, sweep["run_id"], heading="### Failure events of the sweep's runs")
    if "No failure event" not in events:
        lines += ["", events]
    return "\n".join(lines)


def pick_sweep(store: Store, sweep_run_id: str | None) -> pd.Series | None:
    """The newest sweep stage run that recorded points, of `sweep_run_id` when given (a run id or a stage run id)."""
    where, params = "", []
    if sweep_run_id is not None:
        where, params = "AND (s.run_id = ? OR s.stage_run_id = ?)", [sweep_run_id, sweep_run_id]
    found = store.query(f"""
        SELECT s.run_id, s.stage_run_id, s.status, s.started_at FROM stage_runs s
        WHERE s.stage = 'sweep' {where}
          AND EXISTS (SELECT 1 FROM v_sweep_points p WHERE p.stage_run_id = s.stage_run_id)
        ORDER BY s.started_at DESC LIMIT 1""", params)
    if found.empty and sweep_run_id is not None:
        sweeps = store.query("SELECT DISTINCT run_id FROM stage_runs WHERE stage = 'sweep'")["run_id"].tolist()
        raise ReportError(f"no recorded sweep in run {sweep_run_id!r}; runs with a sweep: {', '.join(sweeps) or 'none'} "
                          f"(record one with `{SWEEP_HINT}`)")
    return None if found.empty else found.iloc[0]


def plot_sweep(points: pd.DataFrame, fits: pd.DataFrame, path: Path) -> Path:
    from minirlhf.sweep import gao_rl  # the one definition of R(d), also used for the fit itself

    fig = Figure(figsize=(8, 4.8), layout="constrained")
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
            ax.plot(grid, gao_rl(grid, fit["alpha"], fit["beta"]), color=color, alpha=0.8,
                    label=f"{reward} fit: d({fit['alpha']:.3g} {sign} {abs(fit['beta']):.3g}·log d), R² {_num(fit['r2'], 2)}")
            if reward == "gold" and _is_number(fit["d_star"]) and fit["d_star"] <= grid[-1]:
                ax.axvline(fit["d_star"], color=color, ls=":", lw=1, label=f"gold peak d* = {fit['d_star']:.2f}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("d = sqrt(KL(PPO || SFT))")
    ax.set_ylabel("reward gained over SFT")
    ax.set_title("Over-optimisation sweep: gain against d (points labelled with ppo.kl_coef)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---- 6. samples side by side -----------------------------------------------------------------------------
def section_samples(store: Store, run_id: str, n_samples: int) -> str:
    lines = ["## Samples side by side", ""]
    samples = _eval_samples(store, run_id)
    if samples.empty:
        return "\n".join(lines + [_missing("evaluation samples", f"{RUN_HINT} --stages eval")])
    samples = samples.assign(key=samples["prompt_id"].fillna(samples["prompt"]).astype(str))
    keys = pick_prompts(samples, n_samples)
    lines.append(f"{len(keys)} evaluation prompts, chosen deterministically across intents; every policy's answer "
                 "with its proxy (reward-model) and gold reward.")
    for i, key in enumerate(keys, 1):
        rows = samples[samples["key"] == key].sort_values("policy", key=lambda s: s.map(_policy_rank))
        first = rows.iloc[0]
        intent = f" ({first['intent']})" if _present(first["intent"]) else ""
        lines += ["", f"**{i}. {_cell(first['prompt'])}**{intent}", "",
                  _table(["policy", "response", "proxy", "gold"],
                         [(r["policy"], _cell(r["response"]) or "_(empty)_", _num(r["proxy_reward"]), _num(r["gold_reward"]))
                          for _, r in rows.iterrows()])]
    return "\n".join(lines)


def pick_prompts(samples: pd.DataFrame, n: int) -> list[str]:
    """n prompt keys, the same for the same store: intents taken in turn, within one in a fixed hash order;
    prompts that every policy answered come first."""
    n_policies = samples["policy"].nunique()
    answered = samples.groupby("key")["policy"].nunique()
    by_intent: dict[str, list[str]] = {}
    for key, intent in samples.drop_duplicates("key")[["key", "intent"]].itertuples(index=False):
        by_intent.setdefault(str(intent), []).append(key)
    for intent, keys in by_intent.items():  # complete prompts first, then a stable pseudo-random order
        keys.sort(key=lambda k: (answered[k] < n_policies, hashlib.sha256(k.encode()).hexdigest()))
    picked: list[str] = []
    queues = [by_intent[i] for i in sorted(by_intent)]
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


# ---- 7. failure events -----------------------------------------------------------------------------------
def section_failures(store: Store, run_id: str, heading: str = "## Failure events") -> str:
    lines = [heading, ""]
    evaluated = store.query("SELECT 1 FROM stage_runs WHERE run_id = ? AND stage = 'eval' LIMIT 1", [run_id])
    events = store.query("""
        SELECT v.stage, v.attempt, v.step, v.kind, v.severity, v.message, v.evidence, v.examples,
               TRY_CAST(json_extract_string(s.config, '$.ppo.kl_coef') AS DOUBLE) AS kl_coef
        FROM v_failure_events v JOIN stage_runs s USING (stage_run_id)
        WHERE v.run_id = ? ORDER BY v.detected_at, v.event_id""", [run_id])
    if events.empty:
        if evaluated.empty:
            return "\n".join(lines + [_missing("failure detection", f"{RUN_HINT} --stages eval")])
        return "\n".join(lines + ["No failure event: no detector crossed its threshold (thresholds: config `detect`)."])
    events["rank"] = events["severity"].map(lambda s: SEVERITY_ORDER.index(s) if s in SEVERITY_ORDER else len(SEVERITY_ORDER))
    events = events.sort_values("rank", kind="stable")
    parsed = [(_load_json(e["evidence"]) or {}, _load_json(e["examples"]) or []) for _, e in events.iterrows()]
    rows = [(i, f"`{e['kind']}`", e["severity"], _text(evidence.get("policy")), _int(e["step"]), _cell(e["message"]),
             f"{e['kl_coef']:g}" if _is_number(e["kl_coef"]) else "—")
            for i, ((_, e), (evidence, _)) in enumerate(zip(events.iterrows(), parsed), 1)]
    lines += [_table(["#", "kind", "severity", "policy", "step", "message", "ppo.kl_coef"], rows)]
    for i, ((_, e), (evidence, examples)) in enumerate(zip(events.iterrows(), parsed), 1):
        lines += ["", f"**{i}. `{e['kind']}`** ({e['severity']}): {_cell(e['message'])}", ""]
        shown = {k: v for k, v in evidence.items() if k != "policy"}
        if shown:
            lines.append("Evidence: " + ", ".join(f"`{k}` = {_compact(v)}" for k, v in shown.items()))
        if examples:
            lines += ["", _table(["prompt", "response", "proxy", "gold"],
                                 [(_cell(x.get("prompt")), _cell(x.get("response")) or "_(empty)_",
                                   _num(x.get("proxy_reward")), _num(x.get("gold_reward")))
                                  for x in examples[:3] if isinstance(x, dict)])]
    return "\n".join(lines)


# ---- reading helpers -------------------------------------------------------------------------------------
def _eval_samples(store: Store, run_id: str) -> pd.DataFrame:
    """The run's evaluation samples from one eval attempt (the newest that recorded samples)."""
    return store.query("""
        WITH scored AS (
            SELECT *, max(recorded_at) OVER (PARTITION BY stage_run_id) AS attempt_recorded_at
            FROM v_samples WHERE run_id = ? AND stage = 'eval')
        SELECT policy, prompt_id, intent, prompt, response, proxy_reward, gold_reward, response_words
        FROM scored
        QUALIFY dense_rank() OVER (ORDER BY attempt_recorded_at DESC, stage_run_id) = 1
        ORDER BY policy, prompt_id""", [run_id])


def _by_policy(frame: pd.DataFrame):
    for policy in sorted(frame["policy"].unique(), key=_policy_rank):
        yield policy, frame[frame["policy"] == policy]


def _policy_rank(policy: str) -> tuple[int, str]:
    return (POLICY_ORDER.index(policy) if policy in POLICY_ORDER else len(POLICY_ORDER), str(policy))


def _policy_color(policy: str) -> str:
    known = {p: f"C{i}" for i, p in enumerate(POLICY_ORDER)}
    return known.get(policy, f"C{len(POLICY_ORDER) + int(hashlib.sha256(str(policy).encode()).hexdigest(), 16) % 4}")


def _stage_order(stage: str) -> tuple[int, str]:
    order = ("sft", "reward", "dpo", "rloo", "grpo")
    return (order.index(stage) if stage in order else len(order), stage)


def _load_json(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return json.loads(value) if isinstance(value, str) else value


# ---- formatting helpers ----------------------------------------------------------------------------------
def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)  # a Figure without pyplot renders PNG on the Agg canvas
    return path


def _image(path: Path, alt: str) -> str:
    return f"![{alt}]({FIGURES_DIR}/{path.name})"


def _missing(what: str, command: str) -> str:
    return f"_{what}: not in this store yet: run `{command}`._"


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NaT


def _num(value, digits: int = 3) -> str:
    """Fixed decimals, so columns line up; tiny non-zero values in scientific form; missing as a dash."""
    if not _is_number(value):
        return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _int(value) -> str:
    return str(int(value)) if _is_number(value) else "—"


def _compact(value) -> str:
    if isinstance(value, float):
        return _num(value, 3 if abs(value) < 100 else 1)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_compact(v) for v in value[:6]) + (", …" if len(value) > 6 else "") + "]"
    return _cell(json.dumps(value) if isinstance(value, dict) else str(value))


def _text(value) -> str:
    return _cell(value) if _present(value) else "—"


def _cell(value) -> str:
    """Text safe inside a markdown table cell: one line, no pipes or HTML, at most MAX_CELL_CHARS characters."""
    if not _present(value):
        return ""
    text = " ".join(str(value).split())  # newlines and tabs (HH prompts hold "\n\nHuman:") become single spaces
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("`", "\\`")


def _table(header: list[str], rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
