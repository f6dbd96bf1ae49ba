"""The run report: one markdown file with PNG figures, drawn from the results store alone.

Usage:
    minirlhf report [--output-dir artifacts] [--run <run_id>] [--sweep-run <run_id>]   # -> artifacts/report/report.md
    from minirlhf.report import build_report, report_markdown
    path = build_report(Path("artifacts/rlhf.duckdb"), Path("artifacts/report"))        # report.md + figures/*.png
    text = report_markdown(Path("artifacts/rlhf.duckdb"), Path("artifacts/report"))     # the same markdown, returned
    report = compose_report(db, out_dir, run_id=run_id)      # read and drawn once, rendered twice (flows/pipeline.py):
    write_report(report, out_dir)                            # report.md, figures embedded by relative path
    text = report.markdown(figure=lambda f: f"[{f.alt}](http://localhost:8501/?page={f.page}&run={f.run_id})")

Sections, in order: the run (stages, reuse), the reward model, training curves, the policy comparison, the
over-optimisation sweep, samples side by side, failure events. Every number comes from the store's SQL views
(minirlhf/store.py VIEWS, README "Dashboards and SQL") through the read-only `Store.query`, never from the files
of a stage: the report shows what was recorded. Each query is a file, minirlhf/sql/report/<name>.sql, with DuckDB
named parameters, runnable as is: `minirlhf query --file minirlhf/sql/report/stages.sql --param run_id=<run_id>`.
A section whose data the store lacks says so in one line and names the command that records it. Policies are rows
(sft, ppo, dpo, rloo, ...) and any stage with per-step metrics gets its curves, so new stages show up without a
change here.

Which run: `run_id`, else the newest run with a completed eval stage that is not a sweep. The sweep is its own
run (flows/sweep.py): `sweep_run_id`, else the newest sweep in the store.

Figures: drawn by minirlhf/plots.py into <out_dir>/figures/, each only when its input data (or the plotting code)
changed since the PNG there was drawn: a sidecar `.<name>.png.sha256` keeps that digest, so a report of an unchanged
store redraws nothing. A section is a list of markdown lines and `ReportFigure`s; `Report.markdown(figure=...)`
renders each figure, by default as an image embed (report.md). The Prefect artifact (flows/pipeline.py) renders them
as links to the dashboard page that draws the same data, since the UI cannot load local files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Callable

import matplotlib
import numpy as np
import pandas as pd

from minirlhf import gao, plots
from minirlhf.plots import (plot_accuracy_by_intent, plot_policy_rewards, plot_ppo_curves, plot_reward_vs_length,
                            plot_stage_curves, plot_sweep, policy_rank)
from minirlhf.stage import sha256_file
from minirlhf.store import Store

REPORT_FILE = "report.md"
RENDERED_FILE = ".report-rendered.md"  # report_of_outputs: the report as the caller rendered it (dashboard links)
OUTPUTS_MARKER = ".outputs.sha256"  # report_of_outputs: the digest of the stage outputs the report was built from
FIGURES_DIR = "figures"
SQL_DIR = Path(__file__).resolve().parent / "sql" / "report"
SEVERITY_ORDER = ("critical", "error", "warning", "info")
# The commands that record each section's data (said in the note of a section the store lacks).
RUN_HINT = "minirlhf run --config configs/demo.yaml"
SWEEP_HINT = "minirlhf sweep --config configs/demo.yaml"
CALIBRATION_HINT = "minirlhf calibrate --config configs/calibration.yaml"
COMPARE_HINT = "minirlhf compare --config configs/demo.yaml --seeds 1,2,3"
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
MAX_CELL_CHARS = 300


class ReportError(RuntimeError):
    """The store cannot give a report: it is missing, holds no run, or lacks the run asked for."""


@dataclass(frozen=True)
class ReportFigure:
    """A figure of the report: its PNG, what it shows, the dashboard page that draws the same data
    (dashboards/app.py PAGES) and the run that page should show."""

    path: Path
    alt: str
    page: str
    run_id: str


Block = str | ReportFigure  # a section is a list of blocks: markdown lines and figures


def embed_figure(figure: ReportFigure) -> str:
    """A figure as a markdown image, linked by a path relative to report.md."""
    return f"![{figure.alt}]({FIGURES_DIR}/{figure.path.name})"


@dataclass(frozen=True)
class Report:
    """The report read from the store, its figures drawn; rendered to markdown by `markdown`."""

    sections: list[list[Block]]

    def markdown(self, figure: Callable[[ReportFigure], str] = embed_figure) -> str:
        """The markdown, each figure rendered by `figure` (default: an image embed)."""
        texts = ["\n".join(figure(b) if isinstance(b, ReportFigure) else b for b in blocks) for blocks in self.sections]
        return "\n\n".join(t.strip() for t in texts) + "\n"


# ---- entry points ----------------------------------------------------------------------------------------
def build_report(db_path: Path, out_dir: Path, run_id: str | None = None, sweep_run_id: str | None = None,
                 n_samples: int = 6) -> Path:
    """Write `<out_dir>/report.md` and its figures under `<out_dir>/figures/`; return report.md's path."""
    report = compose_report(db_path, out_dir, run_id=run_id, sweep_run_id=sweep_run_id, n_samples=n_samples)
    return write_report(report, out_dir)


def write_report(report: Report, out_dir: Path) -> Path:
    """`<out_dir>/report.md`, figures embedded by relative path; return its path."""
    path = Path(out_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{REPORT_FILE}.{os.getpid()}.tmp")
    tmp.write_text(report.markdown(), encoding="utf-8")
    tmp.replace(path)  # atomic: a reader sees the old report or the new one, never half of one
    return path


def report_of_outputs(db_path: Path, out_dir: Path, run_id: str, outputs_digest: str,
                      figure: Callable[[ReportFigure], str]) -> str:
    """Write `run_id`'s report to `<out_dir>/report.md` and return it rendered with `figure` (the Prefect artifact's
    dashboard links) - unless the report there was built from the same stage outputs (`outputs_digest`, a digest
    of their sha256s): then both are returned as they are, nothing is queried or drawn (a fully cached rerun).
    The report then keeps showing the run that computed those outputs."""
    out_dir = Path(out_dir)
    marker, rendered = out_dir / OUTPUTS_MARKER, out_dir / RENDERED_FILE
    if (marker.is_file() and marker.read_text() == outputs_digest and rendered.is_file()
            and (out_dir / REPORT_FILE).is_file()):
        return rendered.read_text(encoding="utf-8")
    report = compose_report(db_path, out_dir, run_id=run_id)
    write_report(report, out_dir)
    text = report.markdown(figure)
    rendered.write_text(text, encoding="utf-8")
    marker.write_text(outputs_digest)  # last: an interrupted build is rebuilt next time
    return text


def report_markdown(db_path: Path, out_dir: Path, run_id: str | None = None, sweep_run_id: str | None = None,
                    n_samples: int = 6, figure: Callable[[ReportFigure], str] = embed_figure) -> str:
    """The report as markdown, each figure rendered by `figure`; the PNGs are written to `<out_dir>/figures/`."""
    report = compose_report(db_path, out_dir, run_id=run_id, sweep_run_id=sweep_run_id, n_samples=n_samples)
    return report.markdown(figure)


def compose_report(db_path: Path, out_dir: Path, run_id: str | None = None, sweep_run_id: str | None = None,
                   n_samples: int = 6) -> Report:
    """Read every section from the store and draw its figures into `<out_dir>/figures/`. That folder belongs to
    the report: PNGs left there by an earlier report that this one does not show are removed."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1 (got {n_samples})")
    db_path = Path(db_path)
    if not db_path.is_file():
        raise ReportError(f"no results store at {db_path}: run the pipeline first (`{RUN_HINT}` or `make demo`), "
                          "or point at one with --db / --output-dir")
    store = Store(db_path)
    figures = FigureFolder(Path(out_dir) / FIGURES_DIR)
    with store.reading():  # one read-only connection for all the report's queries
        run_id = pick_run(store, run_id)
        sections = [
            section_header(store, run_id, db_path),
            section_reward_model(store, run_id, figures),
            section_interpret(store, run_id, figures),
            section_training_curves(store, run_id, figures),
            section_policy_comparison(store, run_id, figures),
            section_judges(store, run_id),
            section_constitutional_ai(store, run_id),
            section_compare(store),
            section_sweep(store, sweep_run_id, figures),
            section_hacking(store, figures),
            section_samples(store, run_id, n_samples),
            section_failures(store, run_id),
        ]
    figures.drop_unused()  # a section now empty must not leave last report's figure behind
    return Report(sections)


def pick_run(store: Store, run_id: str | None) -> str:
    """The run asked for (checked), else the newest with a completed eval stage, preferring runs that are not
    sweeps (a sweep run has one eval per kl_coef), then any run with an eval stage, then the newest run."""
    if run_id is not None:
        if _query(store, "run_exists", run_id=run_id).empty:
            newest = _query(store, "newest_runs")["run_id"].tolist()
            raise ReportError(f"no run {run_id!r} in {store.path}; newest runs: {', '.join(newest) or 'none'}")
        return run_id
    found = _query(store, "default_run")
    if found.empty:
        raise ReportError(f"{store.path} holds no run yet: run the pipeline first (`{RUN_HINT}`)")
    return str(found["run_id"].iloc[0])


# ---- 1. the run ------------------------------------------------------------------------------------------
def section_header(store: Store, run_id: str, db_path: Path) -> list[Block]:
    run = _query(store, "run", run_id=run_id).iloc[0]
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
    stages = _query(store, "stages", run_id=run_id)
    if stages.empty:
        return lines + ["_This run recorded no stage yet._"]
    table = []
    for s in stages.itertuples():
        if s.cache_hit:
            note = "output reused" + (f" (computed by run `{s.source_run_id[:12]}`)"
                                      if _present(s.source_run_id) else "")
        else:
            note = _cell(s.cause) if _present(s.cause) else ""
        table.append((s.stage, int(s.attempt), s.status, "yes" if s.cache_hit else "no",
                      _num(s.duration_s, 1), note))
    lines.append(_table(["stage", "attempt", "status", "reused", "seconds", "note"], table))
    return lines


# ---- 2. the reward model ---------------------------------------------------------------------------------
def section_reward_model(store: Store, run_id: str, figures: FigureFolder) -> list[Block]:
    lines: list[Block] = ["## Reward model", ""]
    names = list(RM_METRICS)
    recorded = _query(store, "reward_metrics", run_id=run_id)
    values = {name: value for name, value in zip(recorded["name"], recorded["value"]) if name in RM_METRICS}
    if not values:
        return lines + [_missing("reward-model metrics", f"{RUN_HINT} --stages reward")]
    lines.append(_table(["metric", "value", "what it measures"],
                        [(f"`{n}`", _num(values[n], 0 if n == "reward/n_test_pairs" else 3), RM_METRICS[n])
                         for n in names if n in values]))
    if "reward/accuracy" in values and "reward/label_ceiling" in values:
        lines += ["", f"Accuracy {_num(values['reward/accuracy'])} against a label ceiling of "
                      f"{_num(values['reward/label_ceiling'])}: the labels are noisy, so no model can reach 1."]

    by_intent = _query(store, "rm_accuracy_by_intent", run_id=run_id)
    if by_intent.empty:
        lines += ["", _missing("accuracy per intent", f"{RUN_HINT} --stages reward")]
    else:
        path = figures.draw("rm_accuracy_by_intent.png", plot_accuracy_by_intent, by_intent, values)
        lines += ["", ReportFigure(path, "reward-model accuracy per intent", "reward", run_id)]

    scored = _eval_samples(store, run_id)
    if scored.empty:
        lines += ["", _missing("proxy reward against response length (evaluation samples)", f"{RUN_HINT}")]
    else:
        path = figures.draw("rm_reward_vs_length.png", plot_reward_vs_length, scored)
        lines += ["", ReportFigure(path, "proxy reward against response length", "reward", run_id),
                  "", "A steep slope for a policy whose gold reward does not rise with it is the length hack "
                      "(Singhal et al. 2023)."]
    return lines


def section_interpret(store: Store, run_id: str, figures: FigureFolder) -> list[Block]:
    """What the reward model computes (minirlhf/interpret.py): probes per layer and token attributions."""
    lines: list[Block] = ["### What the reward model computes", ""]
    rows = _query(store, "interpret", run_id=run_id)
    if rows.empty:
        return lines + [_missing("reward-model probes", f"{RUN_HINT} --set interpret.enabled=true")]
    if rows["run_id"].iloc[0] != run_id:
        lines += [f"_From run `{rows['run_id'].iloc[0][:12]}`, the newest interpret stage in this store (this run "
                  "has none of its own)._", ""]
    values = dict(zip(rows["name"], rows["value"]))
    features = sorted({n.split("/")[1] for n in values if n.count("/") == 2 and n.endswith("/decodable_at")})
    layers = int(values.get("interpret/layers", 0))

    def best(feature: str) -> float:
        return max(values.get(f"interpret/{feature}/layer{i}", float("nan")) for i in range(layers + 1))

    folder = store.stage_folder("interpret", rows["output_dir"].iloc[0])
    if features:
        lines += ["Linear probes on the hidden state the score is read from (the last token), one per layer, trained "
                  "on half of the held-out pairs' responses and scored on the other half (accuracy; R² for length). "
                  "'Score R²': how much of the reward model's score the last layer's probe direction explains.", "",
                  _table(["feature", "best probe score", "majority / mean baseline", "decodable at layer",
                          "score R²"],
                         [(f, _num(best(f)), _num(values.get(f"interpret/{f}/baseline")),
                           _int(values.get(f"interpret/{f}/decodable_at")),
                           _num(values.get(f"interpret/{f}/score_r2"))) for f in features])]
    elif (folder / "probes.json").is_file():  # data without gold: the words it rewards and punishes
        words = json.loads((folder / "probes.json").read_text()).get("words", [])
        rows_of = lambda part: [(f"`{w['word']}`", _num(w["mean_effect"]), _int(w["count"])) for w in part]  # noqa: E731
        lines += [f"No gold, so no known features to probe. The score correlates "
                  f"{_num(values.get('interpret/length_corr'))} with the reply's length in words. Each token of "
                  f"{_int(values.get('interpret/word_responses'))} held-out replies was left out once; the mean "
                  "effect of each word that occurs often enough:", "",
                  _table(["rewarded most", "mean effect", "occurrences"], rows_of(words[:8])), "",
                  _table(["punished most", "mean effect", "occurrences"], rows_of(words[::-1][:8]))]
    for name, caption in [("probes.png", "probe score per layer"), ("words.png", "mean effect of each word")] + [
            (f"attribution_{i}.png", "token attribution (leave-one-out)") for i in (1, 2, 3)]:
        if (folder / name).is_file():
            path = figures.draw(f"interpret_{name}", copy_figure, str(folder / name), sha256_file(folder / name))
            lines += ["", ReportFigure(path, caption, "reward", run_id)]
    return lines


# ---- 3. training curves ----------------------------------------------------------------------------------
def section_training_curves(store: Store, run_id: str, figures: FigureFolder) -> list[Block]:
    lines: list[Block] = ["## Training curves", "", "### PPO", ""]
    curves = _query(store, "ppo_curves", run_id=run_id)
    if curves.empty:
        lines.append(_missing("PPO curves", f"{RUN_HINT} --stages ppo"))
    else:
        reused = _query(store, "ppo_reused_from", run_id=run_id)["source"]
        if len(reused) and _present(reused.iloc[0]):
            lines += [f"_PPO's output was reused: these curves were recorded by run `{reused.iloc[0][:12]}`._", ""]
        path = figures.draw("ppo_curves.png", plot_ppo_curves, curves)
        lines.append(ReportFigure(path, "PPO curves", "curves", run_id))
        rows = []
        for (attempt, _), c in curves.groupby(["attempt", "stage_run_id"], sort=False):
            last = c.iloc[-1]
            resumed = last["resumed_from_step"]
            rows.append((int(attempt), last["stage_status"], f"{int(c['step'].min())}–{int(c['step'].max())}",
                         int(resumed) if _is_number(resumed) and resumed > 0 else "—",
                         _num(last["proxy_reward"]), _num(last["gold_reward"]), _num(last["kl"])))
        lines += ["", _table(["attempt", "status", "steps", "resumed from step", "final proxy", "final gold",
                              "final KL"], rows)]

    other = _query(store, "stage_curves", run_id=run_id)
    for stage in sorted(other["stage"].unique(), key=_stage_order):
        rows = other[other["stage"] == stage]
        names = curve_metric_names(rows)
        if names:
            path = figures.draw(f"curves_{stage}.png", plot_stage_curves, stage, rows[rows["name"].isin(names)], names)
            lines += ["", f"### {stage.upper() if len(stage) <= 4 else stage.capitalize()}", "",
                      ReportFigure(path, f"{stage} training curves", "curves", run_id)]
    if not {"dpo", "rloo"} & set(other["stage"]):
        lines += ["", _missing("DPO / RLOO baseline curves",
                               f"{RUN_HINT} --set dpo.enabled=true --set rloo.enabled=true")]
    return lines


def curve_metric_names(rows: pd.DataFrame) -> list[str]:
    """A stage's per-step metrics worth drawing: at least two steps, no bookkeeping, the most telling first."""
    steps = rows.groupby("name")["step"].nunique()
    names = [n for n, k in steps.items() if k >= 2 and not any(s in n for s in CURVE_SKIP)]
    def rank(name: str) -> tuple[bool, int, str]:
        first = next((i for i, key in enumerate(CURVE_PRIORITY) if key in name), len(CURVE_PRIORITY))
        return any(key in name for key in CURVE_SECONDARY), first, name

    return sorted(names, key=rank)[:MAX_CURVE_PANELS]


# ---- 4. policy comparison --------------------------------------------------------------------------------
def section_policy_comparison(store: Store, run_id: str, figures: FigureFolder) -> list[Block]:
    lines: list[Block] = ["## Policy comparison", ""]
    table = _query(store, "policy_comparison", run_id=run_id)
    if table.empty:
        return lines + [_missing("policy evaluation", f"{RUN_HINT} --stages eval")]
    table = table.sort_values("policy", key=lambda s: s.map(policy_rank)).reset_index(drop=True)
    columns = [c for c in COMPARISON_COLUMNS if table[c].notna().any()]
    rows = [[f"**{r['policy']}**"] + [_num(r[c], 1 if c == "response_length" else 3) for c in columns]
            for _, r in table.iterrows()]
    lines += ["Every policy answered the same held-out prompts with the same sampling seed; SFT is the baseline "
              "for KL and win rates.", "", _table(["policy"] + [COMPARISON_COLUMNS[c] for c in columns], rows), "",
              ReportFigure(figures.draw("policy_rewards.png", plot_policy_rewards, table),
                           "gold and proxy reward per policy", "comparison", run_id)]
    return lines


def section_judges(store: Store, run_id: str) -> list[Block]:
    """The judge stage (minirlhf/judge.py): each judge's agreement with the human labels, then its win rates of every
    policy over SFT, all with 95% intervals. Absent (no section) where the run has no judge, as on the demo."""
    rows = _query(store, "judges", run_id=run_id)
    if rows.empty:
        return []
    m = dict(zip(rows["name"], rows["value"]))
    interval = lambda key: f"{_num(m[key])} [{_num(m[key + '_low'])}, {_num(m[key + '_high'])}]"  # noqa: E731
    policies = sorted({name.split("/")[1] for name in m if name.endswith("/win_rate")}, key=policy_rank)
    table = []
    for prefix, who in (("judge_rm", "judge reward model"), ("judge", "language model")):
        if f"{prefix}/agreement" in m:
            table.append([who, f"{interval(prefix + '/agreement')} of {_int(m[prefix + '/n_pairs'])}",
                          *[interval(f"{prefix}/{p}/win_rate") if f"{prefix}/{p}/win_rate" in m else "—"
                            for p in policies]])
    return ["## Judges", "", "HH has no gold annotator. Each judge's agreement with the human labels on held-out "
            "pairs says how far to trust its win rates: a judge at chance (0.5 inside its interval) cannot rank the "
            "policies. Win rates count strict wins over SFT's answer to the same prompt.", "",
            _table(["judge", "agreement with human labels"] + [f"{p} over SFT" for p in policies], table)]


def section_constitutional_ai(store: Store, run_id: str, n_examples: int = 3) -> list[Block]:
    """The cai and rlaif stages of the run (minirlhf/cai.py, minirlhf/rlaif.py): gold of the answers before and
    after revision, the AI labels' agreement with the human and gold ones, and critique -> revision examples."""
    lines: list[Block] = ["## Constitutional AI", ""]
    rows = _query(store, "cai", run_id=run_id)
    if rows.empty:
        return lines + [_missing("Constitutional AI stages", f"{RUN_HINT} --set cai.enabled=true "
                                 "--set sl_cai.enabled=true --set rlaif.enabled=true --set reward.labels=ai")]
    m = dict(zip(rows["name"], rows["value"]))
    table = []
    for label, before, after in (("gold reward", "cai/initial_gold", "cai/revised_gold"),
                                 ("refusal rate", "cai/initial_refusal_rate", "cai/revised_refusal_rate"),
                                 ("length (words)", "cai/initial_length", "cai/revised_length")):
        if before in m:
            table.append([f"red-team answers: {label}", f"{_num(m[before])} -> {_num(m.get(after))}"])
    if "rlaif/human_agreement" in m:
        table.append(["AI labels keeping the human order", f"{_num(m['rlaif/human_agreement'])} "
                      f"[{_num(m['rlaif/human_agreement_low'])}, {_num(m['rlaif/human_agreement_high'])}] "
                      f"of {_int(m['rlaif/n_pairs'])} pairs"])
    for who in ("ai", "human"):
        if f"rlaif/gold_agreement_{who}" in m:
            table.append([f"{who.upper() if who == 'ai' else who} labels agreeing with gold",
                          _num(m[f"rlaif/gold_agreement_{who}"])])
    lines += ["The policy answered red-team prompts, a critic critiqued and revised each answer by a principle of "
              "the constitution; a feedback model relabelled the training pairs. A policy fine-tuned on the "
              "revisions (sl_cai) and PPO on AI labels appear in the policy comparison above.", "",
              _table(["what", "value"], table)]
    examples = _query(store, "cai_revisions", run_id=run_id, n=n_examples)
    for i, (_, r) in enumerate(examples.iterrows(), 1):
        gold = (f" (gold {_num(r['initial_gold'])} -> {_num(r['revised_gold'])})"
                if _present(r["initial_gold"]) else "")
        lines += ["", f"**Example {i}**, principle {_text(r['principle'])}{gold}", "",
                  _table(["", "text"], [["prompt", _text(r["prompt"])], ["answer", _text(r["initial"])],
                                        ["critique", _text(r["critique"])], ["revision", _text(r["revision"])]])]
    return lines


def section_compare(store: Store) -> list[Block]:
    """The newest comparison of the methods over seeds (minirlhf/compare.py): means with 95% intervals, and which
    differences the intervals do not support."""
    lines: list[Block] = ["## Policy methods over seeds", ""]
    table = _query(store, "compare")
    if table.empty:
        return lines + [_missing("comparison over seeds", COMPARE_HINT)]

    def ci(r, name: str, digits: int = 3) -> str:
        if not _present(r.get(name)):
            return ""
        return f"{_num(r[name], digits)} [{_num(r[name + '_low'], digits)}, {_num(r[name + '_high'], digits)}]"

    single = table[~table["policy"].str.contains("_vs_")].sort_values("policy", key=lambda s: s.map(policy_rank))
    pairs = table[table["policy"].str.contains("_vs_")]
    first = table.iloc[0]
    lines += [f"Comparison run `{first['run_id'][:12]}` (started {first['started_at']:%Y-%m-%d %H:%M} UTC): every "
              "method trained from each seed, all answering the same held-out prompts; mean over seeds and prompts "
              "with its 95% paired-bootstrap interval (seeds, then prompts). Budget: sampled episodes for the RL "
              "methods, preference pairs seen for DPO.", "",
              _table(["policy", "gold", "gold gain over SFT", "gold win rate vs SFT", "proxy", "KL", "budget",
                      "train s"],
                     [(f"**{r['policy']}**", ci(r, "gold"), ci(r, "gold_gain"), ci(r, "win_rate_gold"),
                       ci(r, "proxy"), ci(r, "kl", 2), _int(r.get("episodes")), _num(r.get("seconds"), 1))
                      for _, r in single.iterrows()])]
    if not pairs.empty:
        verdicts = [(r["policy"].replace("_vs_", " vs "), ci(r, "win_rate_gold"), ci(r, "gold_gain"),
                     "yes" if (r["gold_gain_low"] > 0 or r["gold_gain_high"] < 0) else "no: the interval holds 0")
                    for _, r in pairs.iterrows()]
        lines += ["", "Method against method, on the same prompts and seeds:", "",
                  _table(["pair", "gold win rate (first wins)", "gold difference", "distinguishable?"], verdicts)]
    return lines


# ---- 5. the over-optimisation sweep ----------------------------------------------------------------------
def section_sweep(store: Store, sweep_run_id: str | None, figures: FigureFolder) -> list[Block]:
    lines: list[Block] = ["## Over-optimisation sweep", ""]
    sweep = pick_sweep(store, sweep_run_id)
    if sweep is None:
        return lines + [_missing("KL sweep", SWEEP_HINT)]
    points = _query(store, "sweep_points", stage_run_id=sweep["stage_run_id"])
    fits = _query(store, "sweep_fits", stage_run_id=sweep["stage_run_id"])
    lines += [f"Sweep run `{sweep['run_id'][:12]}` ({sweep['status']}, "
              f"started {sweep['started_at']:%Y-%m-%d %H:%M} UTC): "
              f"one PPO run per `ppo.kl_coef`, each evaluated against SFT. d = sqrt(KL(PPO || SFT)); a gain is the "
              "policy's reward minus SFT's. Gao et al. (2022) find that for RL the gold gain follows "
              "R(d) = d(α − β·log d), peaking at d* = exp(α/β − 1), while the proxy keeps rising.", ""]
    lines += [ReportFigure(figures.draw("sweep.png", plot_sweep, points, fits), "gain over SFT against d = sqrt(KL)",
                           "sweep", sweep["run_id"]), ""]
    if fits.empty:
        lines.append("_No fit recorded (it needs at least two points with d > 0)._")
    else:
        rows = [(r["reward"], _num(r["alpha"], 4), _num(r["beta"], 4), _num(r["r2"], 3), _num(r["d_star"], 3),
                 _num(r["d_star"] ** 2, 3) if _is_number(r["d_star"]) else "—") for _, r in fits.iterrows()]
        lines.append(_table(["reward", "α", "β", "R²", "d* (peak)", "KL at d*"], rows))
    # What the detectors flagged in each point's evaluation (the eval stage of that kl_coef, in the sweep's run).
    flagged = _query(store, "sweep_flagged_kinds", run_id=sweep["run_id"])
    kinds = dict(zip(flagged["kl_coef"], flagged["kinds"]))
    lines += ["", _table(["point", "kl_coef", "KL", "d", "gold", "proxy", "gold gain", "proxy gain", "flagged"],
                         [(int(p["point"]), f"{p['kl_coef']:g}" if _is_number(p["kl_coef"]) else "—", _num(p["kl"]),
                           _num(p["d"]), _num(p["gold_reward"]),
                           _num(p["proxy_reward"]), _num(p["gold_gain"]), _num(p["proxy_gain"]),
                           kinds.get(p["kl_coef"], "—"))
                          for _, p in points.iterrows()])]
    events = section_failures(store, sweep["run_id"], heading="### Failure events of the sweep's runs")
    if not any(line.startswith("No failure event") for line in events):
        lines += ["", *events]
    return lines


def section_hacking(store: Store, figures: FigureFolder) -> list[Block]:
    """The gold-free reward-hacking warning calibrated against gold, and the defence (minirlhf/calibration.py)."""
    lines: list[Block] = ["## Reward hacking without gold", ""]
    found = _query(store, "calibration")
    if found.empty:
        return lines + [_missing("reward-hacking calibration", CALIBRATION_HINT)]
    cal = found.iloc[0]
    detectors = _query(store, "detector_calibration", stage_run_id=cal["stage_run_id"])
    lines += [f"Calibration run `{cal['run_id'][:12]}` (started {cal['started_at']:%Y-%m-%d %H:%M} UTC): PPO at each "
              "`kl_coef` × `ppo.seed`, watched by gold-free signals. A run's gold onset (docs/REWARD_HACKING.md) is "
              "the truth; thresholds were chosen on the training seeds and are scored here on the others. Lead = "
              "onset step − fire step (≥ 0: the warning came no later than the onset).", ""]
    lines.append(_table(["detector", "threshold", "recall", "hacked runs", "false alarms", "healthy runs",
                         "median lead"],
                        [(r["detector"], _num(r["threshold"], 3), _num(r["recall"], 2), _num(r["n_hacked"], 0),
                          _num(r["false_alarms"], 0), _num(r["n_healthy"], 0), _num(r["median_lead"], 1))
                         for _, r in detectors.iterrows()]))
    figure = store.stage_folder("calibration", cal["output_dir"]) / "calibration.png"  # the stage's own figure
    if figure.is_file():
        lines += ["", ReportFigure(figures.draw("calibration.png", copy_figure, str(figure), sha256_file(figure)),
                                   "gold, proxy and the gold-free signals against PPO step", "hacking",
                                   cal["run_id"])]
    defence = _query(store, "defence", stage_run_id=cal["stage_run_id"])
    if not defence.empty:
        lines += ["", "### The defence: conservative ensemble reward and rollback, on against off", "",
                  _table(["kl_coef", "defence", "seeds", "gold (± 95% CI)", "proxy (± CI)", "KL (± CI)"],
                         [(f"{r['kl_coef']:g}", "on" if r["defended"] else "off", _num(r["n_seeds"], 0),
                           f"{_num(r['gold'])} ± {_num(r['gold_ci'])}", f"{_num(r['proxy'])} ± {_num(r['proxy_ci'])}",
                           f"{_num(r['kl'])} ± {_num(r['kl_ci'])}") for _, r in defence.iterrows()]),
                  "", f"SFT's gold reward: {_num(defence['sft_gold'].iloc[0])}."]
    return lines


def copy_figure(source: str, sha256: str, path: Path) -> Path:
    """A figure a stage drew (the calibration's), copied into the report's figures."""
    shutil.copyfile(source, path)
    return path


def pick_sweep(store: Store, sweep_run_id: str | None) -> pd.Series | None:
    """The newest sweep stage run that recorded points, of `sweep_run_id` when given (a run id or a stage run id)."""
    found = _query(store, "sweep", sweep_run_id=sweep_run_id or "")  # '' matches any run
    if found.empty and sweep_run_id is not None:
        sweeps = _query(store, "sweep_runs")["run_id"].tolist()
        raise ReportError(f"no recorded sweep in run {sweep_run_id!r}; "
                          f"runs with a sweep: {', '.join(sweeps) or 'none'} "
                          f"(record one with `{SWEEP_HINT}`)")
    return None if found.empty else found.iloc[0]


# ---- 6. samples side by side -----------------------------------------------------------------------------
def section_samples(store: Store, run_id: str, n_samples: int) -> list[Block]:
    lines: list[Block] = ["## Samples side by side", ""]
    samples = _eval_samples(store, run_id)
    if samples.empty:
        return lines + [_missing("evaluation samples", f"{RUN_HINT} --stages eval")]
    samples = samples.assign(key=samples["prompt_id"].fillna(samples["prompt"]).astype(str))
    keys = pick_prompts(samples, n_samples)
    lines.append(f"{len(keys)} evaluation prompts, chosen deterministically across intents; every policy's answer "
                 "with its proxy (reward-model) and gold reward.")
    for i, key in enumerate(keys, 1):
        rows = samples[samples["key"] == key].sort_values("policy", key=lambda s: s.map(policy_rank))
        first = rows.iloc[0]
        intent = f" ({first['intent']})" if _present(first["intent"]) else ""
        lines += ["", f"**{i}. {_cell(first['prompt'])}**{intent}", "",
                  _table(["policy", "response", "proxy", "gold"],
                         [(r["policy"], _cell(r["response"]) or "_(empty)_", _num(r["proxy_reward"]),
                           _num(r["gold_reward"]))
                          for _, r in rows.iterrows()])]
    return lines


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
def section_failures(store: Store, run_id: str, heading: str = "## Failure events") -> list[str]:
    lines = [heading, ""]
    evaluated = _query(store, "has_eval", run_id=run_id)
    events = _query(store, "failure_events", run_id=run_id)
    if events.empty:
        if evaluated.empty:
            return lines + [_missing("failure detection", f"{RUN_HINT} --stages eval")]
        return lines + ["No failure event: no detector crossed its threshold (thresholds: config `detect`)."]
    events["rank"] = events["severity"].map(lambda s: SEVERITY_ORDER.index(s) if s in SEVERITY_ORDER
                                            else len(SEVERITY_ORDER))
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
    return lines


# ---- reading helpers -------------------------------------------------------------------------------------
def _query(store: Store, name: str, **params) -> pd.DataFrame:
    """The rows of minirlhf/sql/report/<name>.sql with its named parameters ($run_id, ...) bound to `params`."""
    return store.query((SQL_DIR / f"{name}.sql").read_text(), params)


def _eval_samples(store: Store, run_id: str) -> pd.DataFrame:
    """The run's evaluation samples from one eval attempt (the newest that recorded samples)."""
    return _query(store, "eval_samples", run_id=run_id)


def _stage_order(stage: str) -> tuple[int, str]:
    order = ("sft", "reward", "dpo", "rloo", "grpo")
    return (order.index(stage) if stage in order else len(order), stage)


def _load_json(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return json.loads(value) if isinstance(value, str) else value


# ---- figures: drawn only when what they show changed ------------------------------------------------------
class FigureFolder:
    """The report's figures/ folder. `draw` redraws a PNG only when the digest of its inputs differs from the one
    kept beside it in `.<name>.sha256` (a cached `make demo` spent ~4 s redrawing identical figures); `drop_unused`
    removes the PNGs this report did not draw or keep."""

    def __init__(self, path: Path):
        self.path = path
        self.used: set[str] = set()  # the folder is made at the first draw: a report that fails first leaves none

    def draw(self, name: str, plot: Callable[..., Path], *inputs) -> Path:
        """`figures/<name>`, drawn by `plot(*inputs, path)` unless the PNG there was drawn from the same inputs."""
        path, stamp = self.path / name, self._stamp(name)
        self.used.add(name)
        digest = figure_digest(plot, inputs)
        if path.is_file() and stamp.is_file() and stamp.read_text() == digest:
            return path
        stamp.unlink(missing_ok=True)  # a draw that fails half-way leaves no stamp claiming the PNG is current
        self.path.mkdir(parents=True, exist_ok=True)
        plot(*inputs, path)
        stamp.write_text(digest)
        return path

    def drop_unused(self) -> None:
        for png in self.path.glob("*.png"):
            if png.name not in self.used:
                png.unlink()
                self._stamp(png.name).unlink(missing_ok=True)

    def _stamp(self, name: str) -> Path:
        return self.path / f".{name}.sha256"


def figure_digest(plot: Callable[..., Path], inputs: tuple) -> str:
    """sha256 over what decides a figure's pixels: the plotting code (plots.py, gao.py), matplotlib's version, the
    plot function's name and every input (a data frame by its CSV text, anything else by its JSON)."""
    digest = hashlib.sha256(_plotting_code())
    digest.update(f"{matplotlib.__version__}\0{plot.__name__}".encode())
    for value in inputs:
        text = value.to_csv() if isinstance(value, pd.DataFrame) else json.dumps(value, sort_keys=True, default=str)
        digest.update(b"\0" + text.encode())
    return digest.hexdigest()


@cache  # per process, like the stage keys: the code that draws is the code imported
def _plotting_code() -> bytes:
    return b"".join(Path(module.__file__).read_bytes() for module in (plots, gao))


# ---- formatting helpers ----------------------------------------------------------------------------------
def _missing(what: str, command: str) -> str:
    return f"_{what}: not in this store yet: run `{command}`._"


def _is_number(value) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(value))


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
