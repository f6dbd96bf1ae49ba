"""The markdown report (minirlhf/report.py, `minirlhf report`).

Fast: a store filled through the Store write API with a few rows for every section (a PPO attempt that failed and
a retry that resumed, DPO curves, three evaluated policies, a failure event, a sweep in a run of its own, a later
run that reused every stage), checked for each section's numbers, valid PNGs and the notes of missing sections;
the CLI's errors. Slow: the report of a store filled by a real tiny pipeline run.
"""

import hashlib
import math
import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from minirlhf.cli import app as cli_app
from minirlhf.report import (FIGURES_DIR, SQL_DIR, ReportError, ReportFigure, build_report, compose_report,
                             pick_prompts, report_markdown)
from minirlhf.store import Store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POLICIES = {  # policy -> (proxy_reward, gold_reward, kl, win_rate_gold)
    "sft": (0.1234, -0.2, 0.0, None),
    "ppo": (0.8766, -0.3456, 1.5, 0.25),
    "dpo": (0.4, 0.0512, 0.75, 0.625),
}
INTENTS = ("arithmetic", "benign", "capital", "harmful")
SWEEP_POINTS = [  # kl_coef, kl, gold_gain, proxy_gain
    (0.2, 0.25, 0.10, 0.20), (0.1, 1.0, 0.18, 0.45), (0.05, 2.25, 0.12, 0.70), (0.02, 4.0, -0.05, 0.95),
]
FITS = {"gold": (0.3456, 0.2111, 0.91, 1.75), "proxy": (0.4321, -0.0123, 0.99, None)}


# ---- a small store with every section ---------------------------------------------------------------------
def stage(store, run_id, name, out, *, cache_hit=False, attempt=1, status="completed", cause=None):
    stage_run_id = store.start_stage(run_id, name, cache_hit=cache_hit, attempt=attempt, output_dir=str(out / name))
    return stage_run_id, lambda: store.finish_stage(stage_run_id, status, cause=cause)


def eval_samples():
    rows = []
    for i in range(12):
        intent = INTENTS[i % len(INTENTS)]
        for j, policy in enumerate(POLICIES):
            rows.append({"policy": policy, "prompt_id": f"eval-{i:03d}", "intent": intent,
                         "prompt": f"\n\nHuman: question {i} about {intent}?\n\nAssistant:",
                         "response": f"answer {i} from {policy}" + " more" * (i % 5 + j),
                         "proxy_reward": round(0.1 * i + j, 4), "gold_reward": round(-0.05 * i, 4), "kl": 0.1 * j})
    rows[0]["response"] = "a | pipe and\na newline <b>bold</b>"  # sft's answer to eval-000: must not break a table
    return rows


def fill_main_run(store: Store, out: Path) -> str:
    run_id = store.start_run({"name": "unit-config", "seed": 0})
    for name in ("data",):
        stage(store, run_id, name, out)[1]()
    sft, done = stage(store, run_id, "sft", out)
    for step, loss in ((10, 3.0), (20, 2.0), (30, 1.5)):
        store.log_metrics(sft, {"sft/loss": loss, "sft/learning_rate": 1e-3}, step=step)
    done()
    reward, done = stage(store, run_id, "reward", out)
    store.log_metrics(reward, {"reward/train_loss": 0.7}, step=5)
    store.log_metrics(reward, {"reward/train_loss": 0.6}, step=10)
    store.log_metrics(reward, {"reward/accuracy": 0.6789, "reward/label_ceiling": 0.9, "reward/accuracy_gold": 0.7,
                               "reward/margin": 0.25, "reward/length_corr": 0.4321, "reward/gold_corr": 0.3,
                               "reward/filler_effect": 0.95, "reward/n_test_pairs": 60,
                               **{f"reward/accuracy/{i}": 0.5 + 0.1 * k for k, i in enumerate(INTENTS)}}, step=10)
    done()
    probes, done = stage(store, run_id, "interpret", out)  # the reward model's probes (minirlhf/interpret.py)
    store.log_metrics(probes, {"interpret/layers": 2, "interpret/n_responses": 120,
                               **{f"interpret/filler/layer{i}": v for i, v in enumerate((0.6, 0.8, 0.95))},
                               "interpret/filler/decodable_at": 2, "interpret/filler/baseline": 0.7,
                               "interpret/filler/score_r2": 0.9}, step=0)
    done()
    cai, done = stage(store, run_id, "cai", out)  # Constitutional AI (minirlhf/cai.py), two red-team answers
    store.log_metrics(cai, {"cai/n_prompts": 2, "cai/initial_gold": -0.5, "cai/revised_gold": 0.25,
                            "cai/initial_refusal_rate": 0.0, "cai/revised_refusal_rate": 0.5}, step=0)
    for policy, key in (("cai_initial", "answer"), ("cai_revision", "revision")):
        store.log_samples(cai, [{"prompt_id": f"cai-{i}", "prompt": f"\n\nHuman: harm {i}?\n\nAssistant:",
                                 "response": f"{key} {i} | piped", "gold_reward": -0.5 if key == "answer" else 0.25,
                                 "principle": "harmless", "critique": f"critique {i}"} for i in range(2)],
                          policy=policy)
    done()
    rlaif, done = stage(store, run_id, "rlaif", out)
    store.log_metrics(rlaif, {"rlaif/n_pairs": 40, "rlaif/human_agreement": 0.55, "rlaif/human_agreement_low": 0.4,
                              "rlaif/human_agreement_high": 0.7, "rlaif/gold_agreement_ai": 0.6,
                              "rlaif/gold_agreement_human": 0.9}, step=0)
    done()
    judge, done = stage(store, run_id, "judge", out)  # two judges (minirlhf/judge.py)
    store.log_metrics(judge, {"judge/agreement": 0.51, "judge/agreement_low": 0.44, "judge/agreement_high": 0.58,
                              "judge/n_pairs": 100, "judge/ppo/win_rate": 0.3, "judge/ppo/win_rate_low": 0.15,
                              "judge/ppo/win_rate_high": 0.45, "judge_rm/agreement": 0.63,
                              "judge_rm/agreement_low": 0.57, "judge_rm/agreement_high": 0.68, "judge_rm/n_pairs": 297,
                              "judge_rm/ppo/win_rate": 0.6, "judge_rm/ppo/win_rate_low": 0.42,
                              "judge_rm/ppo/win_rate_high": 0.78}, step=0)
    done()
    # PPO: attempt 1 fails after step 4; attempt 2 resumes from the step-3 checkpoint and finishes at step 6.
    ppo1, done = stage(store, run_id, "ppo", out, status="failed", cause="PPOUnstable: loss is NaN at step 5")
    for step in range(1, 5):
        store.log_metrics(ppo1, {"ppo/proxy_reward": 0.1 * step, "ppo/gold_reward": 0.05 * step, "ppo/kl": 0.2 * step},
                          step=step)
    store.log_metrics(ppo1, {"ppo/resumed_from_step": 0}, step=0)
    done()
    ppo2, done = stage(store, run_id, "ppo", out, attempt=2)
    for step in range(4, 7):
        store.log_metrics(ppo2, {"ppo/proxy_reward": 0.1 * step, "ppo/gold_reward": 0.04 * step, "ppo/kl": 0.15 * step},
                          step=step)
    store.log_metrics(ppo2, {"ppo/resumed_from_step": 3}, step=6)
    done()
    dpo, done = stage(store, run_id, "dpo", out)
    for step in (2, 4, 6):
        store.log_metrics(dpo, {"dpo/loss": 0.7 - 0.1 * step, "dpo/rewards/margins": 0.1 * step,
                                "dpo/epoch": step / 6}, step=step)
    done()
    ev, done = stage(store, run_id, "eval", out)
    metrics = {}
    for policy, (proxy, gold, kl, win) in POLICIES.items():
        metrics |= {f"eval/{policy}/proxy_reward": proxy, f"eval/{policy}/gold_reward": gold, f"eval/{policy}/kl": kl,
                    f"eval/{policy}/response_length": 7.25}
        if win is not None:
            metrics[f"eval/{policy}/win_rate_gold"] = win
    store.log_metrics(ev, metrics)
    samples = eval_samples()
    for policy in POLICIES:
        store.log_samples(ev, [r for r in samples if r["policy"] == policy], policy=policy)
    store.log_failure_event(ev, "overoptimization",
                            "ppo: proxy reward 0.88 vs SFT 0.12, but gold reward -0.35 vs SFT -0.20",
                            severity="error", evidence={"policy": "ppo", "proxy": 0.8766, "gold_sft": -0.2},
                            examples=[{"prompt": "What is 2+2?", "response": "great great great", "proxy_reward": 1.5,
                                       "gold_reward": -1.0}])
    done()
    store.finish_run(run_id, "completed")
    return run_id


def fill_sweep_run(store: Store, out: Path) -> tuple[str, str]:
    """A sweep is its own run (flows/sweep.py); it also has eval stages, one per kl_coef."""
    run_id = store.start_run({"name": "unit-config-sweep", "seed": 0})
    ev, done = stage(store, run_id, "eval", out / "sweep-run")
    store.log_metrics(ev, {"eval/sft/proxy_reward": 9.0, "eval/ppo/proxy_reward": 9.5})
    done()
    sweep, done = stage(store, run_id, "sweep", out)
    for i, (kl_coef, kl, gold_gain, proxy_gain) in enumerate(SWEEP_POINTS):
        store.log_metrics(sweep, {"sweep/kl_coef": kl_coef, "sweep/kl": kl, "sweep/d": math.sqrt(kl),
                                  "sweep/gold_reward": -0.2 + gold_gain, "sweep/proxy_reward": 0.1 + proxy_gain,
                                  "sweep/gold_gain": gold_gain, "sweep/proxy_gain": proxy_gain}, step=i)
    for reward, (alpha, beta, r2, d_star) in FITS.items():
        fit = {f"sweep/fit/{reward}/alpha": alpha, f"sweep/fit/{reward}/beta": beta, f"sweep/fit/{reward}/r2": r2}
        if d_star is not None:
            fit[f"sweep/fit/{reward}/d_star"] = d_star
        store.log_metrics(sweep, fit, step=0)
    done()
    store.finish_run(run_id, "completed")
    return run_id, sweep


def fill_calibration_run(store: Store, out: Path) -> str:
    """A reward-hacking calibration (flows/calibration.py): detectors scored on held-out seeds, defence rows."""
    run_id = store.start_run({"name": "unit-config-calibration", "seed": 0})
    cal, done = stage(store, run_id, "calibration", out)
    for name, (threshold, recall, false_alarms, lead) in {"ood_share": (0.25, 0.75, 1, -1.0),
                                                           "combined": (2, 1.0, 0, 2.5)}.items():
        store.log_metrics(cal, {f"calibration/{name}/threshold": threshold, f"calibration/{name}/recall": recall,
                                f"calibration/{name}/false_alarms": false_alarms, f"calibration/{name}/n_hacked": 4,
                                f"calibration/{name}/n_healthy": 8, f"calibration/{name}/median_lead": lead}, step=0)
    for i, (defended, gold) in enumerate([(0, -0.36), (1, 0.41)], start=1):
        store.log_metrics(cal, {"defence/defended": defended, "defence/kl_coef": 0.01, "defence/n": 2,
                                "defence/gold": gold, "defence/gold_ci": 0.05, "defence/proxy": 2.0,
                                "defence/proxy_ci": 0.1, "defence/kl": 3.0, "defence/kl_ci": 0.2,
                                "defence/sft_gold": -0.12}, step=i)
    done()
    store.finish_run(run_id, "completed")
    return run_id


def fill_compare_run(store: Store, out: Path) -> str:
    """A comparison over seeds (flows/compare.py): means with intervals per policy and for a pair of methods."""
    run_id = store.start_run({"name": "unit-config-compare", "seed": 0})
    cmp, done = stage(store, run_id, "compare", out)
    rows = {"sft": {"gold_reward": (-0.12, -0.2, -0.05)},
            "ppo": {"gold_reward": (0.6, 0.5, 0.7), "gold_gain": (0.72, 0.6, 0.8), "win_rate_gold": (0.7, 0.65, 0.75)},
            "dpo": {"gold_reward": (0.4, 0.3, 0.5), "gold_gain": (0.52, 0.4, 0.6), "win_rate_gold": (0.6, 0.5, 0.7)},
            "ppo_vs_dpo": {"win_rate_gold": (0.55, 0.45, 0.65), "gold_gain": (0.2, -0.05, 0.4)}}
    for policy, metrics in rows.items():
        for name, (value, low, high) in metrics.items():
            store.log_metrics(cmp, {f"compare/{policy}/{name}": value, f"compare/{policy}/{name}_low": low,
                                    f"compare/{policy}/{name}_high": high}, step=0)
    store.log_metrics(cmp, {"compare/ppo/episodes": 1920, "compare/n_seeds": 3}, step=0)
    done()
    store.finish_run(run_id, "completed")
    return run_id


@pytest.fixture
def filled(tmp_path):
    store = Store(tmp_path / "rlhf.duckdb")
    main = fill_main_run(store, tmp_path)
    sweep_run, sweep_stage = fill_sweep_run(store, tmp_path)
    fill_calibration_run(store, tmp_path)
    fill_compare_run(store, tmp_path)
    return store, main, sweep_run, sweep_stage


def section(text: str, title: str) -> str:
    """The markdown between `## title` and the next `## ` heading."""
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def table_row(text: str, first_cell: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 2000, path  # a drawn figure, not an empty canvas header


# ---- fast ------------------------------------------------------------------------------------------------
def test_report_has_every_section_with_the_stores_numbers(filled, tmp_path):
    store, main, sweep_run, _ = filled
    path = build_report(store.path, tmp_path / "report")
    assert path == tmp_path / "report" / "report.md"
    text = path.read_text()
    for title in ("Stages", "Reward model", "Training curves", "Policy comparison", "Judges", "Constitutional AI",
                  "Policy methods over seeds",
                  "Over-optimisation sweep", "Reward hacking without gold", "Samples side by side", "Failure events"):
        assert f"## {title}\n" in text, title
    assert "not in this store yet" not in text  # every section has its data here
    hacking = section(text, "Reward hacking without gold")
    assert table_row(hacking, "ood_share") == ["ood_share", "0.250", "0.75", "4", "1", "8", "-1.0"]
    assert table_row(hacking, "combined")[:3] == ["combined", "2.000", "1.00"]
    assert table_row(hacking, "0.01")[1:4] == ["off", "2", "-0.360 ± 0.050"]
    cai = section(text, "Constitutional AI")
    assert table_row(cai, "red-team answers: gold reward") == ["red-team answers: gold reward", "-0.500 -> 0.250"]
    assert table_row(cai, "AI labels keeping the human order")[1] == "0.550 [0.400, 0.700] of 40 pairs"
    assert cai.count("**Example") == 2 and table_row(cai, "critique") == ["critique", "critique 0"]
    assert table_row(cai, "revision") == ["revision", "revision 0 \\| piped"]  # the pipe stays in its cell
    probes = section(text, "Reward model").split("### What the reward model computes", 1)[1]
    assert table_row(probes, "filler") == ["filler", "0.950", "0.700", "2", "0.900"]
    judges = section(text, "Judges")
    assert table_row(judges, "judge") == ["judge", "agreement with human labels", "ppo over SFT"]
    assert table_row(judges, "judge reward model") == ["judge reward model", "0.630 [0.570, 0.680] of 297",
                                                       "0.600 [0.420, 0.780]"]
    assert table_row(judges, "language model")[1:] == ["0.510 [0.440, 0.580] of 100", "0.300 [0.150, 0.450]"]
    compare = section(text, "Policy methods over seeds")
    assert table_row(compare, "**ppo**")[1:4] == ["0.600 [0.500, 0.700]", "0.720 [0.600, 0.800]",
                                                  "0.700 [0.650, 0.750]"]
    assert table_row(compare, "ppo vs dpo")[3] == "no: the interval holds 0"

    # 1. the run: the main run by default (the sweep run is newer but is a sweep), both PPO attempts.
    assert f"`{main}`" in text and "unit-config |" in text
    assert table_row(text, "ppo")[:4] == ["ppo", "1", "failed", "no"]
    assert "PPOUnstable: loss is NaN at step 5" in table_row(text, "ppo")[5]
    # 2. reward model
    rm = section(text, "Reward model")
    assert table_row(rm, "`reward/accuracy`")[1] == "0.679" and table_row(rm, "`reward/length_corr`")[1] == "0.432"
    assert table_row(rm, "`reward/n_test_pairs`")[1] == "60"
    # 3. PPO curves per attempt (the retry resumed from step 3), and the DPO stage's curves found generically
    curves = section(text, "Training curves")
    assert table_row(curves, "1")[:4] == ["1", "failed", "1–4", "—"]
    assert table_row(curves, "2")[:7] == ["2", "completed", "4–6", "3", "0.600", "0.240", "0.900"]
    assert "### DPO" in curves and "### SFT" in curves and "### Reward" in curves
    # 4. policy comparison: one row per policy, sft first, numbers to 3 decimals, length to 1
    comparison = section(text, "Policy comparison")
    header = table_row(comparison, "policy")
    assert header[:5] == ["policy", "proxy reward", "gold reward", "KL to SFT", "win rate (gold)"]
    assert "EOS rate" not in header  # a metric no policy has gets no column
    rows = [line for line in comparison.splitlines() if line.startswith("| **")]
    assert [r.split("|")[1].strip() for r in rows] == ["**sft**", "**ppo**", "**dpo**"]
    assert table_row(comparison, "**sft**") == ["**sft**", "0.123", "-0.200", "0.000", "—", "7.2"]  # 7.25 -> banker's
    assert table_row(comparison, "**ppo**") == ["**ppo**", "0.877", "-0.346", "1.500", "0.250", "7.2"]
    assert table_row(comparison, "**dpo**")[:5] == ["**dpo**", "0.400", "0.051", "0.750", "0.625"]
    # 5. the sweep: its own run, the fits' alpha/beta, every point with its kl_coef
    sweep = section(text, "Over-optimisation sweep")
    assert f"`{sweep_run[:12]}`" in sweep
    assert table_row(sweep, "gold")[:5] == ["gold", "0.3456", "0.2111", "0.910", "1.750"]
    assert table_row(sweep, "proxy")[:5] == ["proxy", "0.4321", "-0.0123", "0.990", "—"]
    assert [table_row(sweep, str(i))[1] for i in range(4)] == ["0.2", "0.1", "0.05", "0.02"]
    # 6. samples: 6 prompts, every policy's answer, the pipe and newline escaped
    samples = section(text, "Samples side by side")
    assert samples.count("| policy | response | proxy | gold |") == 6
    assert sum(line.startswith("| dpo |") for line in samples.splitlines()) == 6
    assert {i for i in INTENTS if f"({i})" in samples} == set(INTENTS)  # intents mixed
    # 7. failure events: kind, severity, policy, message, compact evidence, the example response
    failures = section(text, "Failure events")
    assert table_row(failures, "1")[1:5] == ["`overoptimization`", "error", "ppo", "—"]
    assert "`proxy` = 0.877" in failures and "great great great" in failures

    figures = sorted(p.name for p in (tmp_path / "report" / FIGURES_DIR).glob("*.png"))
    assert figures == ["curves_dpo.png", "curves_reward.png", "curves_sft.png", "policy_rewards.png", "ppo_curves.png",
                       "rm_accuracy_by_intent.png", "rm_reward_vs_length.png", "sweep.png"]
    for name in figures:
        assert_png(tmp_path / "report" / FIGURES_DIR / name)
        assert f"]({FIGURES_DIR}/{name})" in text  # linked by a relative path


def test_markdown_cells_stay_in_their_table(filled, tmp_path):
    store, *_ = filled
    text = report_markdown(store.path, tmp_path / "report", n_samples=12)
    line = next(line for line in text.splitlines() if "a \\| pipe and a newline" in line)
    assert line.startswith("| sft |") and line.count(" | ") == 3  # four cells: the pipe is escaped
    assert "&lt;b&gt;bold&lt;/b&gt;" in line and "<b>" not in text


def test_the_sweep_run_and_the_run_can_be_chosen(filled, tmp_path):
    store, main, sweep_run, sweep_stage = filled
    text = report_markdown(store.path, tmp_path / "a", run_id=sweep_run, sweep_run_id=sweep_stage)
    assert f"`{sweep_run}`" in text and f"`{main}`" not in text
    assert table_row(section(text, "Policy comparison"), "**sft**")[1] == "9.000"
    assert "reward-model metrics: not in this store yet: run `" in text  # the sweep run here has no reward stage
    with pytest.raises(ReportError, match=f"no recorded sweep in run 'nope'; runs with a sweep: {sweep_run}"):
        report_markdown(store.path, tmp_path / "b", sweep_run_id="nope")
    with pytest.raises(ReportError, match="no run 'nope'"):
        report_markdown(store.path, tmp_path / "b", run_id="nope")


def test_a_run_that_reused_every_stage_shows_the_computing_runs_curves_and_samples(filled, tmp_path):
    store, main, *_ = filled
    rerun = store.start_run({"name": "unit-config", "seed": 0})
    for name in ("data", "sft", "reward", "ppo", "dpo", "eval"):
        stage_run_id, done = stage(store, rerun, name, tmp_path, cache_hit=True)
        if name == "eval":  # a cached stage logs its summary metrics again (pipeline.log_result)
            store.log_metrics(stage_run_id, {f"eval/{p}/gold_reward": g for p, (_, g, _, _) in POLICIES.items()})
        done()
    store.finish_run(rerun, "completed")
    text = report_markdown(store.path, tmp_path / "report")
    assert f"`{rerun}`" in text  # the newest evaluated run
    assert table_row(text, "ppo")[3] == "yes" and f"computed by run `{main[:12]}`" in table_row(text, "ppo")[5]
    curves = section(text, "Training curves")
    assert f"recorded by run `{main[:12]}`" in curves and table_row(curves, "2")[2] == "4–6"
    assert section(text, "Samples side by side").count("| policy | response |") == 6
    assert "great great great" in section(text, "Failure events")
    probes = section(text, "Reward model").split("### What the reward model computes", 1)[1]
    assert f"_From run `{main[:12]}`, the newest interpret stage" in probes  # no interpret stage of its own
    assert table_row(probes, "filler") == ["filler", "0.950", "0.700", "2", "0.900"]


def test_missing_sections_say_what_to_run(tmp_path):
    store = Store(tmp_path / "rlhf.duckdb")
    run_id = store.start_run({"name": "early"})
    stage(store, run_id, "data", tmp_path)[1]()
    text = build_report(store.path, tmp_path / "report").read_text()
    for what in ("reward-model metrics", "PPO curves", "DPO / RLOO baseline curves", "policy evaluation",
                 "Constitutional AI stages", "KL sweep",
                 "evaluation samples", "failure detection"):
        assert f"_{what}" in text and f"_{what}: not in this store yet: run `minirlhf " in text, what
    assert not list((tmp_path / "report" / FIGURES_DIR).glob("*.png"))


def test_a_second_report_drops_figures_of_sections_now_empty(filled, tmp_path):
    store, main, sweep_run, _ = filled
    out = tmp_path / "report"
    build_report(store.path, out)
    assert (out / FIGURES_DIR / "ppo_curves.png").is_file()
    build_report(store.path, out, run_id=sweep_run)  # no PPO in the sweep run here
    assert not (out / FIGURES_DIR / "ppo_curves.png").exists()
    assert not (out / FIGURES_DIR / ".ppo_curves.png.sha256").exists()  # nor its digest
    assert (out / FIGURES_DIR / "sweep.png").is_file()


def test_a_figure_is_redrawn_only_when_its_data_changed(filled, tmp_path):
    store, main, *_ = filled
    out = tmp_path / "report"
    build_report(store.path, out)
    drawn = {p.name: p.stat().st_mtime_ns for p in (out / FIGURES_DIR).glob("*.png")}
    assert len(drawn) == 8 and all((out / FIGURES_DIR / f".{name}.sha256").is_file() for name in drawn)
    build_report(store.path, out)  # nothing changed: no PNG is written again
    assert {p.name: p.stat().st_mtime_ns for p in (out / FIGURES_DIR).glob("*.png")} == drawn

    ppo = store.query("select stage_run_id from stage_runs where run_id = ? and stage = 'ppo' and attempt = 2", [main])
    store.log_metrics(ppo["stage_run_id"][0], {"ppo/proxy_reward": 0.9, "ppo/gold_reward": 0.1, "ppo/kl": 1.2}, step=7)
    (out / FIGURES_DIR / "policy_rewards.png").unlink()  # a PNG deleted by hand is drawn again
    build_report(store.path, out)
    again = {p.name: p.stat().st_mtime_ns for p in (out / FIGURES_DIR).glob("*.png")}
    assert {name for name in drawn if again[name] != drawn[name]} == {"ppo_curves.png", "policy_rewards.png"}
    assert_png(out / FIGURES_DIR / "ppo_curves.png")


def test_figures_render_as_embeds_in_report_md_or_as_dashboard_links(filled, tmp_path):
    store, main, sweep_run, _ = filled
    report = compose_report(store.path, tmp_path / "report")
    embedded = report.markdown()
    assert embedded.count("![") == 8 and f"]({FIGURES_DIR}/sweep.png)" in embedded

    def link(figure: ReportFigure) -> str:
        return f"[{figure.alt}: open the {figure.page} page](http://dash/?page={figure.page}&run={figure.run_id})"

    linked = report.markdown(figure=link)
    assert "![" not in linked and f"{FIGURES_DIR}/" not in linked
    pages = {"reward": 2, "curves": 4, "comparison": 1, "sweep": 1}
    for page, count in pages.items():
        assert linked.count(f"open the {page} page](http://dash/?page={page}&run=") == count, page
    assert f"?page=sweep&run={sweep_run})" in linked and f"?page=curves&run={main})" in linked  # the sweep's own run
    # The rest of the text is the same in both renderings.
    assert [line for line in linked.splitlines() if "http://dash/" not in line] == \
           [line for line in embedded.splitlines() if f"]({FIGURES_DIR}/" not in line]
    assert report_markdown(store.path, tmp_path / "report", figure=link).split("\n", 2)[2] == linked.split("\n", 2)[2]


def test_the_prefect_artifact_links_each_figure_to_its_dashboard_page(filled, tmp_path, monkeypatch):
    """The Prefect UI cannot load the report's local PNGs (broken images): flows/pipeline.py renders links."""
    from flows.pipeline import DASHBOARD_URL_ENV, figure_link

    monkeypatch.delenv(DASHBOARD_URL_ENV, raising=False)
    store, main, *_ = filled
    text = compose_report(store.path, tmp_path / "report", run_id=main).markdown(figure=figure_link)
    assert "![" not in text and text.count("open the dashboard's") == 8
    assert f"[📈 PPO curves: open the dashboard's curves page](http://localhost:8501/?page=curves&run={main})" in text


def test_a_report_of_the_same_outputs_is_reused_not_rebuilt(filled, tmp_path):
    """A fully cached rerun republishes the report of the same stage outputs: nothing queried, nothing drawn."""
    from minirlhf.report import report_of_outputs

    store, main, *_ = filled
    out = tmp_path / "report"
    first = report_of_outputs(store.path, out, main, "digest-a", figure=lambda f: f"[{f.alt}]")
    built = (out / "report.md").stat().st_mtime_ns
    store.path.rename(tmp_path / "moved.duckdb")  # no store to read: a rebuild would fail
    assert report_of_outputs(store.path, out, main, "digest-a", figure=lambda f: "?") == first
    assert (out / "report.md").stat().st_mtime_ns == built
    with pytest.raises(ReportError, match="no results store"):  # other outputs: rebuilt, from the store
        report_of_outputs(store.path, out, main, "digest-b", figure=lambda f: "?")


def test_each_report_query_is_a_commented_file_with_named_parameters():
    files = sorted(SQL_DIR.glob("*.sql"))
    assert len(files) >= 15
    for path in files:
        text = path.read_text()
        assert text.startswith("-- ") and not text.splitlines()[1].startswith("--"), path.name  # one comment line
        assert "?" not in text.split("\n", 1)[1], path.name  # $name parameters: `minirlhf query --param name=value`
    used = set(re.findall(r'_query\(store, "(\w+)"', (SQL_DIR.parents[1] / "report.py").read_text()))
    assert used == {p.stem for p in files}  # every file is used, no query is missing


def test_pick_prompts_is_deterministic_mixes_intents_and_prefers_complete_prompts():
    rows = [{"key": f"p{i}", "intent": INTENTS[i % 4], "policy": p} for i in range(20) for p in ("sft", "ppo")]
    rows += [{"key": "only-sft", "intent": "benign", "policy": "sft"}]
    frame = pd.DataFrame(rows)
    picked = pick_prompts(frame, 6)
    assert picked == pick_prompts(frame.sample(frac=1, random_state=1), 6)  # row order does not matter
    intents = [INTENTS[int(k[1:]) % 4] for k in picked]
    assert sorted(intents[:4]) == sorted(INTENTS) and len(set(picked)) == 6 and "only-sft" not in picked
    expected_first = min((f"p{i}" for i in range(0, 20, 4)), key=lambda k: hashlib.sha256(k.encode()).hexdigest())
    assert picked[0] == expected_first  # 'arithmetic' sorts first; within it, the hash order
    assert len(pick_prompts(frame, 100)) == 21


def test_cli_writes_the_report_and_prints_its_path(filled, tmp_path):
    store, *_ = filled
    out = CliRunner().invoke(cli_app, ["report", "--db", str(store.path), "--out", str(tmp_path / "r"), "-n", "2"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == str(tmp_path / "r" / "report.md")
    assert section((tmp_path / "r" / "report.md").read_text(), "Samples side by side").count("| policy |") == 2


@pytest.mark.parametrize("case", ["missing store", "empty store", "unknown run"])
def test_cli_exits_1_with_a_clear_message(tmp_path, case):
    args = ["report", "--output-dir", str(tmp_path)]
    if case != "missing store":
        store = Store(tmp_path / "rlhf.duckdb")
        run_id = store.start_run({})
        if case == "empty store":  # a file with the schema and no run in it
            with duckdb.connect(str(store.path)) as con:
                con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
        else:
            args += ["--run", "nope"]
    out = CliRunner().invoke(cli_app, args)
    assert out.exit_code == 1
    assert "Traceback" not in out.output and isinstance(out.exception, SystemExit)
    expected = {"missing store": "no results store at", "empty store": "holds no run yet",
                "unknown run": "no run 'nope'"}[case]
    assert expected in " ".join(out.output.split())
    assert not (tmp_path / "report" / "report.md").exists()


# ---- slow: a real tiny pipeline run -----------------------------------------------------------------------
@pytest.mark.slow
def test_report_of_a_real_tiny_pipeline_run(tmp_path):
    from minirlhf.config import load_config
    from minirlhf.pipeline import run_pipeline
    from tests.test_ppo import TINY

    # The DPO and RLOO baselines kept short (their curves still have several logged steps).
    cfg = load_config(None, TINY + ["dpo.max_steps=4", "dpo.logging_steps=1", "rloo.steps=3", "rloo.batch_size=8",
                                    f"output_dir={tmp_path}"])
    run_pipeline(cfg)
    store = Store.for_output_dir(tmp_path)
    policies = store.query("select distinct policy from v_policy_comparison")["policy"].tolist()
    steps = store.query("select count(*) as n from v_ppo_curves")["n"].iloc[0]

    out = CliRunner().invoke(cli_app, ["report", "--output-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    text = (tmp_path / "report" / "report.md").read_text()
    comparison = section(text, "Policy comparison")
    assert {"sft", "ppo", "dpo", "rloo"} <= set(policies)
    for policy in policies:
        assert table_row(comparison, f"**{policy}**")[1] != "—"  # proxy reward recorded for every policy
    ppo_table = section(text, "Training curves")
    assert table_row(ppo_table, "1")[:3] == ["1", "completed", f"1–{cfg.ppo.steps}"] and steps == cfg.ppo.steps
    for stage in ("SFT", "Reward", "DPO", "RLOO"):  # every stage with per-step metrics gets its curves
        assert f"### {stage}\n" in ppo_table, stage
    assert "`reward/accuracy`" in section(text, "Reward model")
    assert "KL sweep: not in this store yet" in text  # a pipeline run records no sweep
    for name in ("ppo_curves.png", "policy_rewards.png", "rm_accuracy_by_intent.png", "rm_reward_vs_length.png",
                 "curves_dpo.png", "curves_rloo.png"):
        assert_png(tmp_path / "report" / FIGURES_DIR / name)
