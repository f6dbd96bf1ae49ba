"""What a person sees on the console (minirlhf/console.py): the end-of-run summary, the libraries quieted around a
stage and restored after it, and the tiny pipeline's whole output, quiet and --verbose."""

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from rich.console import Console

from minirlhf.config import load_config
from minirlhf.console import (VERBOSE_ENV, SummarisedFilter, print_summary, quiet_libraries, stage_failure_line,
                              stage_line)
from minirlhf.errors import UserError
from minirlhf.stage import StageResult
from tests.test_ppo import TINY

REPO = Path(__file__).resolve().parent.parent
EVAL = {f"eval/{p}/{k}": v for p, values in {
    "sft": {"gold_reward": -0.5, "proxy_reward": -0.9, "kl": 0.0},
    "ppo": {"gold_reward": -0.25, "proxy_reward": 1.5, "kl": 2.5, "win_rate_gold": 0.625, "win_rate_proxy": 0.9},
    "rloo": {"gold_reward": -0.4, "proxy_reward": 0.2, "kl": 0.75, "win_rate_gold": 0.5, "win_rate_proxy": 0.6},
}.items() for k, v in values.items()}


def _render(cfg, results, seconds=12.3) -> str:
    out = io.StringIO()
    print_summary(cfg, results, seconds, Console(file=out, width=200, color_system=None))
    return out.getvalue()


def _results(tmp_path, eval_metrics, events=()) -> dict:
    results = {"data": StageResult("data", "k1", metrics={"data/n_eval_prompts": 16.0}, cache_hit=True, run_id="r-1"),
               "reward": StageResult("reward", "k2", metrics={"reward/accuracy": 0.7}, run_id="r-1"),
               "eval": StageResult("eval", "k3", metrics=eval_metrics, run_id="r-1")}
    out = results["eval"].path(tmp_path)
    out.mkdir(parents=True)
    (out / "failure_events.json").write_text(json.dumps(list(events)))
    return results


def test_the_summary_compares_the_policies_and_lists_events_store_and_next_commands(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "rloo.enabled=true", "dpo.enabled=false"])
    event = {"kind": "overoptimization", "severity": "error", "policy": "ppo",
             "message": "proxy up, gold down\nsince step 40"}
    text = _render(cfg, _results(tmp_path, EVAL, [event]))
    lines = text.splitlines()
    assert "3 stages in 12.3 s (1 reused)" in lines[0]
    header = next(line for line in lines if "policy" in line)
    assert [c in header for c in ("gold reward", "proxy reward", "KL to SFT", "gold win rate")] == [True] * 4
    rows = {line.split()[1]: line for line in lines
            if line.startswith("│") and line.split()[1] in ("SFT", "PPO", "DPO", "RLOO")}
    assert set(rows) == {"SFT", "PPO", "RLOO"}  # DPO was not evaluated: no row
    assert "+1.500" in rows["PPO"] and "62%" in rows["PPO"] and "—" in rows["SFT"]
    assert "the same 16 held-out prompts" in text and "reward model held-out accuracy 70%" in text
    assert "⚠ ppo overoptimization: proxy up, gold down; since step 40" in text  # one line per event
    assert f"store: {tmp_path / 'rlhf.duckdb'}" in text
    for command in (f"minirlhf dashboard --output-dir {tmp_path}", f"minirlhf report --output-dir {tmp_path}",
                    f"minirlhf query --output-dir {tmp_path} \"select policy, gold_reward, proxy_reward, kl from "
                    "v_policy_comparison where run_id = 'r-1'\""):
        assert command in text
    assert len(lines) < 25


def test_the_summary_without_a_gold_annotator_has_no_gold_columns(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    hh = {k: v for k, v in EVAL.items() if "gold" not in k}
    text = _render(cfg, _results(tmp_path, hh))
    assert "gold" not in text.split("next:")[0] and "proxy win rate" in text and "failure events: none" in text


def test_the_summary_of_a_run_without_eval_and_in_the_default_root(tmp_path):
    cfg = load_config(None, ["output_dir=artifacts"])
    text = _render(cfg, {"sft": StageResult("sft", "k", run_id=None)})
    assert "no evaluation in this run" in text and "minirlhf dashboard  " in text and "--output-dir" not in text


def test_stage_lines():
    assert stage_line("reward", StageResult("reward", cache_hit=True)) == "✓ reward  reused"
    assert stage_line("sft", StageResult("sft", seconds=3.0)) is None  # its progress bar is its line
    data = stage_line("data", StageResult("data", seconds=0.25,
                                          metrics={"data/n_sft": 300.0, "data/n_rl_prompts": 64.0}))
    assert data == "✓ data    0.2 s  300 demonstrations, 64 RL prompts"
    ev = stage_line("eval", StageResult("eval", seconds=1.0, metrics={**EVAL, "eval/ppo/failure_events": 2.0}))
    assert ev == "✓ eval    1.0 s  SFT, PPO, RLOO compared, 2 failure events"
    # The stages without a progress bar of their own say what they did in one line.
    judge = stage_line("judge", StageResult("judge", seconds=90.0, metrics={
        "judge/agreement": 0.55, "judge/agreement_low": 0.49, "judge/agreement_high": 0.61, "judge/n_pairs": 300.0}))
    assert judge == ("✓ judge   90.0 s  the language model agrees with the human labels on 55% [49%, 61%] of 300 "
                     "held-out pairs")
    both = stage_line("judge", StageResult("judge", seconds=90.0, metrics={
        "judge/agreement": 0.55, "judge/agreement_low": 0.49, "judge/agreement_high": 0.61, "judge/n_pairs": 300.0,
        "judge_rm/agreement": 0.6, "judge_rm/agreement_low": 0.54, "judge_rm/agreement_high": 0.66,
        "judge_rm/n_pairs": 297.0}))
    assert both.endswith("300 held-out pairs; the judge reward model agrees with the human labels on 60% [54%, 66%] "
                         "of 297 held-out pairs")
    cai = stage_line("cai", StageResult("cai", seconds=5.0, metrics={
        "cai/n_prompts": 8.0, "cai/initial_gold": -1.2, "cai/revised_gold": 0.4}))
    assert cai == "✓ cai     5.0 s  8 red-team answers critiqued and revised; gold -1.20 -> +0.40"
    rlaif = stage_line("rlaif", StageResult("rlaif", seconds=2.0, metrics={
        "rlaif/n_pairs": 16.0, "rlaif/human_agreement": 0.75}))
    assert rlaif.endswith("16 pairs relabelled; the human label kept on 75%")
    assert stage_line("interpret", StageResult("interpret", seconds=1.0, metrics={
        "interpret/n_responses": 120.0, "interpret/layers": 2.0})).endswith("probes on 120 responses, 2 layers")
    assert stage_line("interpret", StageResult("interpret", seconds=1.0, metrics={  # HH: no probes
        "interpret/n_responses": 594.0, "interpret/word_responses": 120.0, "interpret/length_corr": -0.4})).endswith(
        "attributions of 120 of 594 responses; score-length correlation -0.40")


def test_a_failed_attempt_prints_one_line_but_a_user_error_is_left_to_the_cli(capsys):
    with pytest.raises(RuntimeError), stage_failure_line("ppo", 2):
        raise RuntimeError("PPO unstable at step 4:\nkl 30")
    assert capsys.readouterr().err.strip() == "✗ ppo     attempt 2 failed: RuntimeError: PPO unstable at step 4:; kl 30"
    with pytest.raises(UserError), stage_failure_line("data", 1):
        raise UserError("x.jsonl: no pairs")
    assert capsys.readouterr().err == ""


def test_quiet_libraries_restores_transformers_datasets_and_the_warning_filters(monkeypatch):
    import importlib

    from transformers.utils import logging as hf_logging

    ds_tqdm = importlib.import_module("datasets.utils.tqdm")  # the module: `datasets.utils.tqdm` is also its class

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    hf_logging.set_verbosity_info()
    filters = list(warnings.filters)
    trl_level = logging.getLogger("trl").level
    try:
        with quiet_libraries():
            assert hf_logging.get_verbosity() == logging.ERROR and not hf_logging.is_progress_bar_enabled()
            assert ds_tqdm.are_progress_bars_disabled() or os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS")
            assert logging.getLogger("trl").level == logging.ERROR
            with warnings.catch_warnings(record=True) as caught:  # the filters in force, recorded instead of shown
                warnings.warn_explicit("`gradient_checkpointing` is deprecated", FutureWarning, "training_args.py", 1,
                                       module="transformers.training_args")
                warnings.warn_explicit("ours", FutureWarning, "sft.py", 1, module="minirlhf.sft")
            assert [str(w.message) for w in caught] == ["ours"]
        assert hf_logging.get_verbosity() == logging.INFO and hf_logging.is_progress_bar_enabled()
        assert not ds_tqdm.are_progress_bars_disabled() or os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS")
        assert warnings.filters == filters and logging.getLogger("trl").level == trl_level
        with quiet_libraries(verbose=True):  # --verbose: nothing changes
            assert hf_logging.get_verbosity() == logging.INFO
        with pytest.raises(ValueError), quiet_libraries():  # restored when the stage raises too
            raise ValueError("stage failed")
        assert hf_logging.get_verbosity() == logging.INFO and warnings.filters == filters
    finally:
        hf_logging.set_verbosity_warning()


def test_the_quiet_filter_keeps_only_what_the_summary_does_not_repeat():
    record = logging.LogRecord("minirlhf", logging.WARNING, "evaluate.py", 1, "failure event: %s (%s)", ("x", "k"),
                               None)
    other = logging.LogRecord("minirlhf.ppo", logging.WARNING, "trainer.py", 1, "skipping checkpoint %s", ("c",), None)
    assert not SummarisedFilter().filter(record) and SummarisedFilter().filter(other)


def test_training_reads_the_same_verbose_variable():
    import minirlhf.training

    assert minirlhf.training.VERBOSE_ENV == VERBOSE_ENV


def _run(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    env.pop(VERBOSE_ENV, None)
    sets = [a for o in TINY for a in ("--set", o)]
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", *sets, "--set", f"output_dir={tmp_path}", *args],
                          capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_the_tiny_run_shows_progress_lines_and_the_summary_and_verbose_shows_everything(tiny_cli_run, tmp_path):
    quiet = tiny_cli_run[1]
    for noise in ("{'loss'", "FutureWarning", "Loading weights", "Writing model shards", "Tokenizing", "LOAD REPORT"):
        assert noise not in quiet, quiet[-3000:]
    assert "✓ data" in quiet and "✓ eval" in quiet and "loss " in quiet and "proxy " in quiet
    summary = quiet.split("next:")[0]
    assert "gold reward" in summary and "KL to SFT" in summary and "│ PPO" in summary and "│ RLOO" in summary
    for command in ("minirlhf dashboard", "minirlhf report", "minirlhf query"):
        assert command in quiet
    verbose = _run(tmp_path / "verbose", "--stages", "sft", "--verbose")
    assert "{'loss'" in verbose, verbose[-3000:]
