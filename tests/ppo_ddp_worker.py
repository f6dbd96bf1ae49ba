"""One PPO update of the tiny pipeline's models on a fixed batch of episodes, by one process or by W ranks
(torchrun), for tests/test_ppo_ddp.py.

torchrun --standalone --nproc-per-node W tests/ppo_ddp_worker.py SPEC.json OUT_DIR
torchrun --standalone --nproc-per-node W tests/ppo_ddp_worker.py SPEC.json OUT_DIR train KILL_RANK KILL_AT_STEP

SPEC: {"config": PipelineConfig JSON, "data_dir", "sft_dir", "reward_dir"}. With one process and no
OUT_DIR/episodes.pt yet, the worker rolls out ppo.batch_size episodes and saves them (with the prompt sampler's
state after the rollout); every run then loads them, takes its rank's rows, computes advantages and takes one
update. Each rank writes OUT_DIR/update-w{W}-rank{R}.pt: its whitened advantages and its weights after the step.
`train`: run_ppo on every rank into OUT_DIR/ppo (resuming from its checkpoints), rank KILL_RANK SIGKILLing itself
right after step KILL_AT_STEP (0: never).
"""

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import torch

from minirlhf.config import PipelineConfig
from minirlhf import distributed
from minirlhf.ppo.trainer import PPOTrainer, Rollout, build_trainer, run_ppo


def rows_of(batch: Rollout, lo: int, hi: int) -> Rollout:
    """Episodes lo..hi-1 of a rollout (the per-episode tensors, lists and the ensemble's (k, batch) scores)."""
    fields = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if f.name == "member_z" and value is not None:
            value = value[:, lo:hi]
        elif isinstance(value, (torch.Tensor, list)):
            value = value[lo:hi]
        fields[f.name] = value
    return Rollout(**fields)


def train(cfg: PipelineConfig, spec: dict, out: Path, kill_rank: int, kill_at: int) -> None:
    step = PPOTrainer.train_step

    def train_step_then_maybe_die(self):
        metrics = step(self)
        if distributed.rank() == kill_rank and self.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # an unclean death of one rank, mid-run
        return metrics

    PPOTrainer.train_step = train_step_then_maybe_die
    run_ppo(cfg, Path(spec["data_dir"]), Path(spec["sft_dir"]), Path(spec["reward_dir"]), out / "ppo")


def main() -> None:
    spec, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    distributed.init_from_env()
    cfg = PipelineConfig.model_validate(spec["config"])
    if sys.argv[3:4] == ["train"]:
        return train(cfg, spec, out, int(sys.argv[4]), int(sys.argv[5]))
    trainer = build_trainer(cfg, Path(spec["data_dir"]), Path(spec["sft_dir"]), Path(spec["reward_dir"]),
                            out / f"checkpoints-w{distributed.world_size()}")
    episodes = out / "episodes.pt"
    if not episodes.exists():
        assert distributed.world_size() == 1, "roll the episodes out with one process first"
        batch = trainer.rollout()
        torch.save({"batch": dataclasses.asdict(batch), "generator": trainer.generator.get_state()}, episodes)
    saved = torch.load(episodes, weights_only=False)
    batch = rows_of(Rollout(**saved["batch"]), trainer.lo, trainer.hi)
    trainer.generator.set_state(saved["generator"])  # the minibatch order: as after the rollout
    advantages, returns, _, _ = trainer.advantages(batch)
    stats = trainer.update(batch, advantages, returns)
    torch.save({"advantages": advantages, "stats": stats,
                "weights": {f"{i}": p.detach().clone() for i, p in enumerate(trainer.params)}},
               out / f"update-w{distributed.world_size()}-rank{distributed.rank()}.pt")


if __name__ == "__main__":
    main()
    # Leave the process group before the interpreter exits: a gloo group torn down at exit can abort a rank after
    # its work is done ("terminate called without an active exception", seen once in CI on 2026-12-05), as
    # minirlhf.launch.main does.
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
