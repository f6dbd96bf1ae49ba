"""The TRL stages data parallel (`<stage>.nproc` 2: minirlhf.launch starts 2 gloo ranks under torchrun; accelerate
shares each batch between them) against one process, on the tiny pipeline's data and SFT (slow tier)."""

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minirlhf.config import load_config
from minirlhf.pipeline import plan, run_pipeline, run_stage
from minirlhf.store import Store
from tests.test_ppo import TINY


@pytest.fixture(scope="module")
def ddp_root(tiny_run, tmp_path_factory):
    """A fresh output root holding the tiny run's data and SFT outputs (copied: the stages below add outputs)."""
    cfg, results = tiny_run
    root = tmp_path_factory.mktemp("ddp-stages") / "artifacts"
    for name in ("data", "sft"):
        shutil.copytree(results[name].path(cfg.output_dir), results[name].path(root))
    return root, results, Path(cfg.output_dir)


def config(root: Path, *extra: str):
    return load_config(None, [*TINY, *extra, f"output_dir={root}"])


@contextmanager
def torch_threads(n: int):
    """Compute at n torch threads, as each rank does (torchrun: OMP_NUM_THREADS=1); this process's count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def weights(root: Path, result) -> dict[str, torch.Tensor]:
    return load_file(result.path(root) / "model.safetensors")


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def steps_logged(store: Store, stage_run_id: str, name: str) -> list[int]:
    rows = store.query("select step from metrics where stage_run_id = $s and name = $n order by step",
                       {"s": stage_run_id, "n": name})
    return rows["step"].tolist()


@pytest.mark.slow
def test_sft_on_two_ranks_takes_the_steps_of_one_process_and_rank_1_writes_nothing(ddp_root):
    """3 SFT steps (inside the first epoch: no partial batch) by 2 ranks x 16 rows and by one process x 32 rows."""
    from minirlhf.sft import base_model

    root, results, _ = ddp_root
    one_cfg, two_cfg = (config(root, "sft.max_steps=3", "sft.logging_steps=1"),
                        config(root, "sft.max_steps=3", "sft.logging_steps=1", "sft.nproc=2"))
    store = Store.for_output_dir(root)
    with store.run({"ddp": "sft"}) as run_id, torch_threads(1):
        one = run_stage(plan(one_cfg, "sft", results), store, run_id)
        before = {p.relative_to(root) for p in root.rglob("*")}
        two = run_stage(plan(two_cfg, "sft", results), store, run_id)
    assert one.key != two.key  # nproc is in the key: the ranks' sums round differently
    start = {k: v for k, v in base_model(one_cfg, results["data"].path(root))[1].state_dict().items()}
    moved = max(float((weights(root, one)[k] - start[k]).abs().max()) for k in weights(root, one))
    diff = max_abs_diff(weights(root, one), weights(root, two))
    print(f"SFT, 3 steps: 2 ranks against 1 process, max abs weight difference {diff:.3g} (moved {moved:.3g})")
    assert moved > 1e-3 and diff < 1e-5
    assert two.metrics["sft/steps"] == 3
    # What the 2-rank run added to the root: its output, the stage lock and the launch spec, and the store's files;
    # rank 1 computed in a scratch folder outside the root (minirlhf.stage.stage_output).
    added = {p for p in {p.relative_to(root) for p in root.rglob("*")} - before if p.parts[:2] != ("sft", two.key)}
    assert {p.as_posix() for p in added} <= {f"sft/{two.key}", f"sft/.{two.key}.lock", f"sft/.{two.key}.launch.json",
                                             "rlhf.duckdb.wal"}, added
    # rank 0 alone logged: one row per step, in the stage run of the process that launched the ranks
    run = store.query("select stage_run_id, status from stage_runs where run_id = $r and stage = 'sft' "
                      "and cache_key = $k", {"r": run_id, "k": two.key})
    assert run["status"].tolist() == ["completed"]
    assert steps_logged(store, run["stage_run_id"][0], "sft/loss") == [1, 2, 3]


@pytest.mark.slow
def test_reward_dpo_and_rloo_run_on_two_ranks(ddp_root):
    """The reward model, DPO and RLOO, each as 2 ranks: complete outputs, trained, logged once per step; DPO (6
    steps of 8 pairs, no partial batch) within 1e-4 of the one-process DPO."""
    root, results, tiny_root = ddp_root
    cfg = config(root, "reward.nproc=2", "dpo.nproc=2", "rloo.nproc=2")
    store = Store.for_output_dir(root)
    parallel = run_pipeline(cfg, stages=("reward", "dpo", "rloo"), store=store)
    for name, loss in (("reward", "reward/train_loss"), ("dpo", "dpo/loss"), ("rloo", "rloo/loss")):
        assert not parallel[name].cache_hit and parallel[name].key != results[name].key
        stage_run = store.query("select stage_run_id from stage_runs where stage = $s and cache_key = $k",
                                {"s": name, "k": parallel[name].key})["stage_run_id"][0]
        steps = steps_logged(store, stage_run, loss)
        assert steps and steps == sorted(set(steps)), (name, steps)  # each step once: rank 0 alone logged
    assert parallel["reward"].metrics["reward/accuracy"] > 0.5  # it learned the preferences, on 2 ranks
    assert parallel["rloo"].metrics["rloo/steps"] == 4
    sft = weights(root, parallel["sft"])
    dpo_two, dpo_one = weights(root, parallel["dpo"]), weights(tiny_root, results["dpo"])
    diff, moved = max_abs_diff(dpo_two, dpo_one), max_abs_diff(dpo_one, sft)
    print(f"DPO, 6 steps: 2 ranks against 1 process, max abs weight difference {diff:.3g} (moved {moved:.3g})")
    assert moved > 1e-3 and diff < 1e-4
