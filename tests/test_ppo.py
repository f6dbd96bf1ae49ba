"""PPO stage runs on a tiny pipeline (slow tier): logging, checkpoints, exact resume after SIGKILL, the guard."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minirlhf.config import load_config
from minirlhf.pipeline import plan, run_pipeline, run_stage
from minirlhf.ppo.trainer import CURVE, PPOUnstable, checkpoint_dir_for, read_curve, run_ppo
from minirlhf.store import Store

pytestmark = pytest.mark.slow

TINY = [
    "data.n_sft=300", "data.n_pairs_train=300", "data.n_pairs_test=60", "data.n_rl_prompts=64",
    "data.n_eval_prompts=16",
    "model.tiny.n_layer=1", "model.tiny.n_embd=32", "model.tiny.n_head=2", "model.tiny.vocab_size=320",
    "sft.num_train_epochs=2", "sft.learning_rate=1e-2", "reward.num_train_epochs=2", "reward.learning_rate=1e-2",
    "ppo.batch_size=8", "ppo.mini_batch_size=4", "ppo.num_ppo_epochs=2", "ppo.max_new_tokens=12",
    "ppo.steps=6", "ppo.checkpoint_every=3", "ppo.keep_checkpoints=2", "ppo.sample_every=2",
    # The baselines (tests/test_baselines.py): a few seconds each, enough to move the tiny policy measurably.
    "dpo.max_steps=6", "dpo.batch_size=8", "dpo.learning_rate=1e-3",
    "rloo.steps=4", "rloo.batch_size=16", "rloo.learning_rate=5e-3", "rloo.max_new_tokens=12", "rloo.sample_every=2",
    "grpo.steps=4", "grpo.batch_size=16", "grpo.learning_rate=5e-3", "grpo.max_new_tokens=12", "grpo.sample_every=2",
]
WORKER = Path(__file__).with_name("ppo_worker.py")
REQUIRED = ["ppo/kl", "ppo/proxy_reward", "ppo/gold_reward", "ppo/non_score_reward", "ppo/entropy",
            "ppo/policy/approxkl", "ppo/policy/clipfrac", "ppo/value/loss", "ppo/value/explained_variance",
            "ppo/response_length", "ppo/eos_rate", "ppo/time/rollout_s", "ppo/time/update_s"]


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    """data, SFT and reward model once; each test copies them into its own output root."""
    root = tmp_path_factory.mktemp("foundation")
    cfg = load_config(None, TINY + [f"output_dir={root}"])
    run_pipeline(cfg, ("data", "sft", "reward"))
    return root


def _fresh(foundation: Path, tmp_path: Path, name: str, extra=()) -> tuple:
    out = tmp_path / name
    shutil.copytree(foundation, out, ignore=shutil.ignore_patterns("rlhf.duckdb*"))
    cfg = load_config(None, TINY + list(extra) + [f"output_dir={out}"])
    ups = {}
    for stage in ("data", "sft", "reward"):
        ups[stage] = plan(cfg, stage, ups).find_output()
    return cfg, ups, plan(cfg, "ppo", ups).out_dir


def _worker(out: Path, kill_at: int, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), str(out), str(kill_at), *TINY, *extra],
                          capture_output=True, text=True, timeout=600)


def _metrics(out: Path):
    frame = Store.for_output_dir(out).query(
        "select step, name, value from metrics m join stage_runs s using (stage_run_id) "
        "where s.stage = 'ppo' and name not like 'ppo/time/%' order by s.started_at, step, name")
    return {(int(r.step), r.name): r.value for r in frame.itertuples()}  # later runs overwrite earlier (resume)


def test_ppo_logs_every_step_and_keeps_newest_checkpoints(foundation, tmp_path):
    cfg, ups, out = _fresh(foundation, tmp_path, "run")
    store = Store.for_output_dir(cfg.output_dir)
    run_id = store.start_run(cfg.model_dump(mode="json"))
    result = run_stage(plan(cfg, "ppo", ups), store, run_id)
    names = store.query("select distinct name from metrics")["name"].tolist()
    for name in REQUIRED:
        assert name in names, name
    steps = store.query("select distinct step from metrics where name = 'ppo/kl' order by step")["step"].tolist()
    assert steps == [1, 2, 3, 4, 5, 6]
    assert len(store.query("select * from samples where policy = 'ppo'")) > 0
    ckpts = sorted(p.name for p in checkpoint_dir_for(out).iterdir())
    assert ckpts == ["step-000003", "step-000006"]  # newest 2 kept
    assert result.metrics["ppo/resumed_from_step"] == 0
    # the policy moved away from SFT (the update did something) but not absurdly far
    policy = load_file(result.path(cfg.output_dir) / "model.safetensors")
    sft = load_file(ups["sft"].path(cfg.output_dir) / "model.safetensors")
    assert any(not torch.equal(policy[k], sft[k]) for k in policy)


def test_exact_resume_after_sigkill(foundation, tmp_path):
    _, _, straight_out = _fresh(foundation, tmp_path, "straight")
    done = _worker(straight_out.parents[1], 0)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESUMED_FROM 0" in done.stdout

    _, _, killed_out = _fresh(foundation, tmp_path, "killed")
    killed = _worker(killed_out.parents[1], 4)  # dies right after step 4; its last checkpoint is step 3
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not killed_out.exists()  # no final output from a killed run
    resumed = _worker(killed_out.parents[1], 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "RESUMED_FROM 3" in resumed.stdout

    a, b = _metrics(straight_out.parents[1]), _metrics(killed_out.parents[1])
    assert a.keys() == b.keys() and len(a) >= 6 * len(REQUIRED) - 6
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
    # The curve the detectors read survives the kill too: restored from the checkpoint, then continued.
    curves = [[{k: v for k, v in row.items() if not k.startswith("ppo/time/")} for row in read_curve(out / CURVE)]
              for out in (straight_out, killed_out)]
    assert [row["step"] for row in curves[1]] == list(range(1, 7))
    for row_a, row_b in zip(*curves):
        assert row_a == pytest.approx(row_b, rel=1e-6, abs=1e-7)
    wa, wb = load_file(straight_out / "model.safetensors"), load_file(killed_out / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_nan_raises_ppo_unstable_then_resume_continues(foundation, tmp_path):
    cfg, ups, out = _fresh(foundation, tmp_path, "nan")
    args = (cfg, *(ups[s].path(cfg.output_dir) for s in ("data", "sft", "reward")), out)
    with pytest.raises(PPOUnstable) as err:
        run_ppo(*args, inject_nan_at_step=5)
    assert err.value.cause == "nan_loss" and err.value.step == 5
    assert err.value.last_good_checkpoint.name == "step-000003"
    assert "last good checkpoint" in str(err.value)
    result = run_ppo(*args, attempt=2, inject_nan_at_step=5)  # a retry: resumes, the injection does not fire again
    assert result.metrics["ppo/resumed_from_step"] == 3
    assert result.metrics["ppo/lr"] < cfg.ppo.learning_rate * 0.5


def test_corrupt_checkpoint_is_skipped(foundation, tmp_path, caplog):
    cfg, ups, out = _fresh(foundation, tmp_path, "corrupt")
    args = (cfg, *(ups[s].path(cfg.output_dir) for s in ("data", "sft", "reward")), out)
    with pytest.raises(PPOUnstable):
        run_ppo(*args, inject_nan_at_step=5)  # leaves step-000003
    # fake a newer checkpoint that was cut off mid-write (no COMPLETE marker) and corrupt nothing else
    partial = checkpoint_dir_for(out) / "step-000004"
    shutil.copytree(checkpoint_dir_for(out) / "step-000003", partial)
    (partial / "COMPLETE").unlink()
    with caplog.at_level("WARNING"):
        result = run_ppo(*args)
    assert "skipping checkpoint" in caplog.text and "step-000004" in caplog.text
    assert result.metrics["ppo/resumed_from_step"] == 3
