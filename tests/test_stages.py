"""Tiny-model stage runs (slow tier): real TRL trainers, real DuckDB, asserting that things changed the right way."""

import json
import subprocess
import sys

import pytest

from minirlhf.config import load_config
from minirlhf.pipeline import run_pipeline
from minirlhf.stage import is_complete
from minirlhf.store import Store

pytestmark = pytest.mark.slow
FOUNDATION = ("data", "sft", "reward")

TINY = [
    "data.n_sft=300", "data.n_pairs_train=300", "data.n_pairs_test=100", "data.n_rl_prompts=32",
    "data.n_eval_prompts=16",
    "model.tiny.n_layer=1", "model.tiny.n_embd=32", "model.tiny.n_head=2", "model.tiny.vocab_size=320",
    "sft.num_train_epochs=2", "sft.logging_steps=2", "sft.learning_rate=1e-2", "reward.learning_rate=1e-2",
    "reward.num_train_epochs=3", "reward.logging_steps=2",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, TINY + [f"output_dir={out}"])
    results = run_pipeline(cfg, FOUNDATION)
    return cfg, results, Store.for_output_dir(out)


def test_sft_loss_goes_down(tiny_run):
    cfg, results, store = tiny_run
    losses = store.query("select step, value from metrics where name = 'sft/loss' order by step")
    assert len(losses) >= 3
    assert losses["value"].iloc[-1] < 0.7 * losses["value"].iloc[0]
    assert is_complete(results["sft"].path(cfg.output_dir))


def test_reward_model_metrics_recorded(tiny_run):
    _, results, store = tiny_run
    rows = store.query("select name, value from metrics where name like 'reward/%' and name not like 'reward/train_%'")
    names = set(rows["name"])
    for name in ("reward/accuracy", "reward/label_ceiling", "reward/accuracy_gold", "reward/margin",
                 "reward/length_corr", "reward/gold_corr", "reward/filler_effect"):
        assert name in names
    assert any(n.startswith("reward/accuracy/") for n in names)  # per intent
    accuracy = rows.set_index("name")["value"]["reward/accuracy"]
    assert accuracy > 0.65  # clearly better than chance, even this tiny
    assert results["reward"].metrics["reward/accuracy"] == pytest.approx(accuracy)


def test_lineage_recorded(tiny_run):
    cfg, results, store = tiny_run
    runs = store.query("select run_id, status, config from runs")
    assert list(runs["status"]) == ["completed"]
    assert json.loads(runs["config"][0])["sft"]["num_train_epochs"] == 2
    arts = store.query("select kind, path, sha256, bytes from artifacts order by path")
    assert len(arts) == 3 and (arts["bytes"] > 0).all()
    assert set(arts["sha256"]) == {r.sha256 for r in results.values()}


def test_rerun_reuses_complete_stages_and_recomputes_a_corrupt_one(tiny_run):
    cfg, results, store = tiny_run
    again = run_pipeline(cfg, FOUNDATION)
    assert all(r.cache_hit for r in again.values())
    assert again["reward"].metrics == results["reward"].metrics
    # Corrupt the reward model's weights: the stage is no longer complete, and a rerun recomputes it.
    weights = next(p for p in results["reward"].path(cfg.output_dir).iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    assert not is_complete(results["reward"].path(cfg.output_dir))
    third = run_pipeline(cfg, FOUNDATION)
    assert third["data"].cache_hit and third["sft"].cache_hit and not third["reward"].cache_hit
    assert is_complete(third["reward"].path(cfg.output_dir))
    # deterministic
    assert third["reward"].metrics["reward/accuracy"] == pytest.approx(results["reward"].metrics["reward/accuracy"])
    hits = store.query("select stage, cache_hit from stage_runs order by started_at")
    assert list(hits["cache_hit"][-3:]) == [True, True, False]


def test_missing_data_file_is_a_clear_error(tmp_path, tiny_run):
    from minirlhf.sft import run_sft

    cfg = tiny_run[0]
    with pytest.raises(FileNotFoundError, match="sft.jsonl.*Run the data stage"):
        run_sft(cfg, tmp_path / "no-data", tmp_path / "sft")
    assert not (tmp_path / "sft").exists()  # nothing half-written


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "minirlhf.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_query_formats_and_read_only(tiny_run):
    cfg, _, store = tiny_run
    out = _cli("query", "select round(value, 6) as v from metrics where name = 'reward/accuracy'",
               "--output-dir", str(cfg.output_dir), "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["v"] == pytest.approx(
        store.query("select value from metrics where name='reward/accuracy'")["value"][0], abs=1e-6)
    csv = _cli("query", "select stage from stage_runs order by started_at limit 1",
               "--output-dir", str(cfg.output_dir), "--format", "csv")
    assert csv.stdout.splitlines() == ["stage", "data"]
    before = len(store.query("select * from metrics"))
    refused = _cli("query", "delete from metrics", "--output-dir", str(cfg.output_dir))
    assert refused.returncode == 1 and "read-only" in refused.stderr
    assert len(store.query("select * from metrics")) == before


def test_cli_bad_config_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  kl_coeff: 0.1\n")
    out = _cli("run", "--config", str(bad))
    assert out.returncode == 2
    assert "ppo.kl_coeff: unknown key" in out.stderr
    neg = _cli("run", "--set", "sft.learning_rate=-1")
    assert neg.returncode == 2 and "sft.learning_rate" in neg.stderr


def test_cli_data_preview_renders_gold_scores():
    out = _cli("data", "preview", "-n", "4")
    assert out.returncode == 0, out.stderr
    assert "Human:" in out.stdout and "gold" in out.stdout
