"""The RLHF pipeline as a Prefect flow: data -> sft -> reward -> ppo, dpo, rloo -> eval, each stage a cached task.

Usage:
    python -m flows.pipeline configs/demo.yaml --set ppo.kl_coef=0.1      # one run, ephemeral Prefect
    from flows.pipeline import rlhf_pipeline
    results = rlhf_pipeline(load_config("configs/demo.yaml"))           # {"data": StageResult, ...}
    prefect deploy --all && prefect worker start --pool minirlhf-pool    # deployments: prefect.yaml

A rerun with the same config is answered from the cache (task state "Cached"); a stage whose output was
deleted or corrupted is recomputed, with everything whose inputs changed because of it; an unstable PPO
run is retried from its last good checkpoint (tasks/ppo.py). The store (`<output_dir>/rlhf.duckdb`) gets
one `runs` row per flow run (with the Prefect flow run id) and one `stage_runs` row per stage attempt; the
UI gets a markdown summary and a table comparing the policies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
from pathlib import Path

from minirlhf.config import PipelineConfig, load_config
from minirlhf.console import rollback_summary
from minirlhf.pipeline import enabled_stages
from minirlhf.report import ReportFigure, report_of_outputs
from minirlhf.stage import StageResult
from minirlhf.store import Store
from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import deployment, flow_run

from flows.ray_runner import run_waves, stage_runner

# Where `minirlhf dashboard` serves (its default port); set MINIRLHF_DASHBOARD_URL when it runs elsewhere.
DASHBOARD_URL_ENV = "MINIRLHF_DASHBOARD_URL"
DEFAULT_DASHBOARD_URL = "http://localhost:8501"
HEADLINE = ("gold_reward", "proxy_reward", "kl", "win_rate_gold", "win_rate_proxy", "response_length", "eos_rate",
            "distinct_2")


@flow(name="rlhf-pipeline", flow_run_name="{config.name}-seed{config.seed}")
def rlhf_pipeline(config: PipelineConfig = PipelineConfig()) -> dict[str, StageResult]:
    """Run (or reuse) every stage of the RLHF pipeline on `config` and record the run in the store."""
    store = Store.for_config(config)
    names = list(enabled_stages(config))  # a baseline switched off (dpo.enabled: false) is not run
    with stage_runner(config, names) as runner, \
            store.run(config.model_dump(mode="json"), prefect_flow_run_id=flow_run.id, deployment=deployment.name,
                      parameters={"config": config.model_dump(mode="json")}) as run_id:
        # locally one stage after another; on Ray each wave of independent stages at once
        done = run_waves(runner, config, names, run_id, {})
        results = {name: done[name] for name in names}  # in pipeline order
    publish_summary(config, results, run_id)
    return results


# ---- artifacts for people in the UI (metrics live in the store) --------------------------------------
def policy_comparison(eval_metrics: dict[str, float]) -> list[dict]:
    """`eval/<policy>/<metric>` -> one row per policy, headline metrics first (None where a policy has none)."""
    by_policy: dict[str, dict[str, float]] = {}
    for name, value in eval_metrics.items():
        _, policy, metric = name.split("/", 2)
        by_policy.setdefault(policy, {})[metric] = value
    metrics = [m for m in HEADLINE if any(m in row for row in by_policy.values())]
    metrics += sorted({m for row in by_policy.values() for m in row} - set(metrics))
    return [{"policy": policy, **{m: _round(row.get(m)) for m in metrics}} for policy, row in by_policy.items()]


def summary_markdown(config: PipelineConfig, results: dict[str, StageResult]) -> str:
    lines = [f"# RLHF pipeline `{config.name}` (seed {config.seed})", "",
             "| stage | reused | seconds | sha256 | output |", "|---|---|---:|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {'yes' if r.cache_hit else 'no'} | {r.seconds:.1f} | `{r.sha256[:12]}` "
                     f"| `{r.path(config.output_dir)}` |")
    rows = policy_comparison(results["eval"].metrics) if "eval" in results else []
    if rows:
        policies = [row["policy"] for row in rows]
        lines += ["", f"## Evaluation on {config.eval.n_prompts} held-out prompts (at most)", "",
                  "| metric | " + " | ".join(policies) + " |", "|---|" + "---:|" * len(policies)]
        for metric in [k for k in rows[0] if k != "policy"]:
            lines.append(f"| {metric} | "
                         + " | ".join("" if row[metric] is None else f"{row[metric]:.4g}" for row in rows) + " |")
    if "ppo" in results:
        m = results["ppo"].metrics
        lines += ["", f"PPO: {results['ppo'].step} steps, resumed from step {int(m.get('ppo/resumed_from_step', 0))}."]
        if "ppo/warning_step" in m:  # the gold-free reward-hacking warning stopped the run (hacking.rollback)
            lines += ["", f"**Gold-free {rollback_summary(m)}** (the checkpoint from before the signals rose). The "
                          "`reward_hacking_onset` failure event holds the signals and example samples (dashboard: "
                          "failures page)."]
    lines += ["", f"Store: `{Path(config.output_dir) / 'rlhf.duckdb'}` (`minirlhf query \"select * from metrics\"`)."]
    return "\n".join(lines)


def publish_summary(config: PipelineConfig, results: dict[str, StageResult], run_id: str) -> None:
    slug = re.sub(r"[^a-z0-9-]+", "-", config.name.lower()).strip("-") or "run"  # artifact keys: a-z, 0-9, dashes
    create_markdown_artifact(summary_markdown(config, results), key=f"{slug}-summary",
                             description=f"RLHF pipeline {config.name}: stages and evaluation")
    db = (Path(config.output_dir) / "rlhf.duckdb").resolve()
    create_link_artifact(dashboard_link(run_id), link_text=f"dashboard: run {run_id[:8]}, policy comparison",
                         key=f"{slug}-dashboard",
                         description=f"Start the dashboard first: `minirlhf dashboard --db {db}`")
    if "eval" in results:
        create_table_artifact(policy_comparison(results["eval"].metrics), key=f"{slug}-policies",
                              description="SFT vs RLHF policies on held-out prompts (eval/<policy>/<metric>)")
        # The full report (minirlhf report): report.md with its PNG figures in <output_dir>/report, and the same
        # text in the UI, where each figure is a link to the dashboard page that draws it (a browser on the UI
        # cannot load the PNGs, local files of this machine).
        # A rerun that computed nothing republishes the report of the same outputs instead of rebuilding it.
        report_dir = Path(config.output_dir) / "report"
        outputs = hashlib.sha256(json.dumps(sorted((n, r.sha256) for n, r in results.items())).encode()).hexdigest()
        create_markdown_artifact(report_of_outputs(db, report_dir, run_id, outputs, figure=figure_link),
                                 key=f"{slug}-report",
                                 description=f"RLHF report of run {run_id[:8]}; report.md with its figures in "
                                             f"{report_dir.resolve()}")


def figure_link(figure: ReportFigure) -> str:
    """A report figure in the UI: a link to the dashboard page that draws the same data, for the same run."""
    return f"[📈 {figure.alt}: open the dashboard's {figure.page} page]({dashboard_link(figure.run_id, figure.page)})"


def dashboard_link(run_id: str, page: str = "comparison") -> str:
    """The dashboard's URL scheme (dashboards/app.py):
    ?page=<runs|curves|reward|comparison|samples|failures>&run=<run_id>."""
    base = os.environ.get(DASHBOARD_URL_ENV, DEFAULT_DASHBOARD_URL).rstrip("/")
    return f"{base}/?page={page}&run={run_id}"


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


# ---- command line -------------------------------------------------------------------------------------
def run_from_yaml(path: str | Path | None = "configs/demo.yaml",
                  overrides: list[str] | tuple[str, ...] = ()) -> dict[str, StageResult]:
    """Load a YAML config (plus `section.field=value` overrides) and run the flow on it."""
    return rlhf_pipeline(load_config(path, overrides))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the RLHF pipeline as a Prefect flow.")
    parser.add_argument("config", nargs="?", default="configs/demo.yaml",
                        help="YAML config (default: configs/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config value, e.g. --set ppo.kl_coef=0.1 (repeatable)")
    args = parser.parse_args(argv)
    run_from_yaml(args.config, args.overrides)


if __name__ == "__main__":
    main()
