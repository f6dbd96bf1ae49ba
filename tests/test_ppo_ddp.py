"""Our PPO, data parallel over torch.distributed (minirlhf/distributed.py), on CPU with gloo: the reductions
against one process (fast tier), then W ranks with B/W episodes each against one process with the B episodes (slow
tier: torchrun with 2 processes on the tiny pipeline's models)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minirlhf import distributed
from minirlhf.ppo import core

WORKER = Path(__file__).with_name("ppo_ddp_worker.py")
REPO = Path(__file__).resolve().parents[1]


def test_without_a_process_group_everything_is_the_one_process_identity():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(8) == (0, 8) and distributed.reducer() is None
    x = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce(x) is x and distributed.gather("a") == ["a"]


def test_a_loss_over_shares_with_the_global_count_sums_to_the_whole_batch_loss():
    """What each rank computes (its token sum over all ranks' tokens) adds up to the one-process loss, gradient too."""
    torch.manual_seed(0)
    logprobs = torch.randn(6, 5, requires_grad=True)
    old, advantages = torch.randn(6, 5), torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    whole, _ = core.policy_loss(logprobs, old, advantages, mask, 0.2)
    (grad_whole,) = torch.autograd.grad(whole, logprobs)
    count = mask.bool().sum()
    shares = [core.policy_loss(logprobs[s], old[s], advantages[s], mask[s], 0.2, count)[0]
              for s in (slice(0, 2), slice(2, 6))]
    (grad_shares,) = torch.autograd.grad(sum(shares), logprobs)
    assert float(sum(shares).detach()) == pytest.approx(float(whole.detach()), abs=1e-6)
    assert torch.allclose(grad_shares, grad_whole, atol=1e-7)


def _whiten_share(rank: int, init_file: str, out_dir: str) -> None:
    """A gloo rank of test_whitening_over_two_ranks_sees_the_whole_batch: its half of the batch, whitened."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x, mask = _batch()
    lo, hi = distributed.shard(6)
    reduce = distributed.reducer()
    torch.save({"whiten": core.masked_whiten(x[lo:hi], mask[lo:hi], reduce=reduce),
                "var": core.masked_var(x[lo:hi], mask[lo:hi], reduce=reduce),
                "ev": core.explained_variance(x[lo:hi] * 0.5, x[lo:hi], mask[lo:hi], reduce)},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(6, 4, generator=generator), (torch.rand(6, 4, generator=generator) > 0.25).float()


def test_whitening_over_two_ranks_sees_the_whole_batch(tmp_path):
    """Two gloo processes, three episodes each: masked statistics with `reduce` are those of all six."""
    import torch.multiprocessing as mp

    mp.spawn(_whiten_share, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    shares = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    x, mask = _batch()
    assert torch.allclose(torch.cat([s["whiten"] for s in shares]), core.masked_whiten(x, mask), atol=1e-6)
    assert all(float(s["var"]) == pytest.approx(float(core.masked_var(x, mask)), abs=1e-6) for s in shares)
    assert all(s["ev"] == pytest.approx(core.explained_variance(x * 0.5, x, mask), abs=1e-6) for s in shares)


def torchrun(nproc: int, spec: Path, out: Path, *args: str, ok: bool = True) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), str(WORKER), str(spec), str(out), *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=REPO)
    assert (done.returncode == 0) == ok, done.stdout[-2000:] + done.stderr[-4000:]


def write_spec(cfg, results, path: Path) -> Path:
    path.write_text(json.dumps({"config": cfg.model_dump(mode="json"),
                                **{f"{s}_dir": str(results[s].path(cfg.output_dir)) for s in ("data", "sft",
                                                                                               "reward")}}))
    return path


@pytest.mark.slow
def test_two_ranks_with_half_the_episodes_each_take_the_one_process_step(tiny_run, tmp_path):
    cfg, results = tiny_run
    spec = write_spec(cfg, results, tmp_path / "spec.json")
    torchrun(1, spec, tmp_path)  # rolls out ppo.batch_size (8) episodes, then one update
    torchrun(2, spec, tmp_path)  # 2 ranks x 4 of the same episodes
    one = torch.load(tmp_path / "update-w1-rank0.pt", weights_only=False)
    ranks = [torch.load(tmp_path / f"update-w2-rank{r}.pt", weights_only=False) for r in (0, 1)]
    # advantages whitened over the global batch: the ranks' shares are the one process's rows
    assert torch.allclose(torch.cat([r["advantages"] for r in ranks]), one["advantages"], atol=1e-6)
    # after the step: every rank holds the same weights, equal to the one process's within 1e-6
    start = build_start_weights(cfg, results)
    moved = max(float((one["weights"][k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-4  # the step changed the weights: the comparison below is not trivially true
    for rank in ranks:
        diff = max(float((rank["weights"][k] - one["weights"][k]).abs().max()) for k in one["weights"])
        print(f"2 ranks against 1 process: max abs weight difference {diff:.3g} (the step moved weights {moved:.3g})")
        assert diff < 1e-6, f"max abs weight difference {diff:.3g} against one process"
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in one["weights"])
    for name in ("ppo/policy/loss", "ppo/value/loss", "ppo/policy/approxkl", "ppo/policy/clipfrac"):
        assert ranks[0]["stats"][name] == pytest.approx(one["stats"][name], abs=1e-6)
    # only the workers' own files: no stage output, no checkpoint, nothing from rank 1 beyond its update file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes.pt", "spec.json", "update-w1-rank0.pt",
                                                         "update-w2-rank0.pt", "update-w2-rank1.pt"]


def build_start_weights(cfg, results) -> dict[str, torch.Tensor]:
    """The trainer's parameters before any step, keyed as the worker saves them."""
    from minirlhf.ppo.trainer import build_trainer

    trainer = build_trainer(cfg, *(results[s].path(cfg.output_dir) for s in ("data", "sft", "reward")),
                            Path("/nonexistent"))
    return {f"{i}": p.detach().clone() for i, p in enumerate(trainer.params)}


@pytest.mark.slow
def test_a_two_rank_run_killed_mid_way_resumes_exactly(tiny_run, tmp_path):
    """Rank 1 SIGKILLed after step 4 (checkpoints every 3 steps): the relaunch resumes both ranks from step 3 and ends
    with the weights and curve of an uninterrupted 2-rank run; rank 0 alone wrote checkpoints and the output."""
    cfg, results = tiny_run
    cfg = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"nproc": 2})})
    spec = write_spec(cfg, results, tmp_path / "spec.json")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for out in (whole, killed):
        out.mkdir()
    torchrun(2, spec, whole, "train", "0", "0")
    torchrun(2, spec, killed, "train", "1", "4", ok=False)  # dies after step 4
    assert sorted(p.name for p in (killed / "ppo.checkpoints").iterdir()) == ["step-000003"]
    assert not (killed / "ppo").exists()
    torchrun(2, spec, killed, "train", "0", "0")  # resumes from step 3
    for name in ("model.safetensors", "curve.jsonl"):
        assert (killed / "ppo" / name).read_bytes() == (whole / "ppo" / name).read_bytes(), name
    record = json.loads((killed / "ppo" / "record.json").read_text())
    assert record["metrics"]["ppo/resumed_from_step"] == 3
    state = torch.load(killed / "ppo.checkpoints" / "step-000006" / "trainer_state.pt", weights_only=True)
    assert len(state["rank_rng"]) == 2  # each rank's RNG states, written by rank 0
    assert not torch.equal(state["rank_rng"][0]["torch_rng"], state["rank_rng"][1]["torch_rng"])


@pytest.mark.slow
def test_the_stage_runner_launches_two_ranks_and_retries_them_from_a_checkpoint(tiny_run, monkeypatch):
    """`ppo.nproc=2` through run_stage: torchrun starts the ranks; a NaN at step 5 reaches this process as
    PPOUnstable; the retry resumes from step 3; rank 0 recorded every step into this stage run once."""
    from minirlhf.errors import PPOUnstable
    from minirlhf.pipeline import plan, run_stage
    from minirlhf.ppo.trainer import TEST_NAN_AT_STEP_ENV
    from minirlhf.store import Store

    cfg, results = tiny_run
    cfg = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"nproc": 2})})
    spec = plan(cfg, "ppo", results)
    assert spec.key != plan(tiny_run[0], "ppo", results).key  # other episodes: another output
    store = Store.for_output_dir(cfg.output_dir)
    with store.run({"ddp": True}) as run_id:
        monkeypatch.setenv(TEST_NAN_AT_STEP_ENV, "5")
        with pytest.raises(PPOUnstable, match="nan_loss") as failed:
            run_stage(spec, store, run_id, attempt=1)
        assert failed.value.step == 5 and failed.value.last_good_checkpoint.name == "step-000003"
        monkeypatch.delenv(TEST_NAN_AT_STEP_ENV)
        result = run_stage(spec, store, run_id, attempt=2)
    assert result.metrics["ppo/resumed_from_step"] == 3 and result.step == 6
    kl = store.query("select s.attempt, list(m.step order by m.step) as steps from metrics m join stage_runs s "
                     "using (stage_run_id) where s.run_id = $r and m.name = 'ppo/kl' group by s.attempt "
                     "order by s.attempt", {"r": run_id})
    # rank 0's rows only (two ranks logging would double every step): the first attempt up to the NaN, the retry
    # from the checkpoint on
    assert [list(steps) for steps in kl["steps"]] == [[1, 2, 3, 4], [4, 5, 6]]
    attempts = store.query("select attempt, status from stage_runs where run_id = $r and stage = 'ppo' "
                           "order by attempt", {"r": run_id})
    assert attempts["status"].tolist() == ["failed", "completed"]
