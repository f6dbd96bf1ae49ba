"""PPO throughput on this machine: episodes/s and tokens/s of rollout and update, and how close one PPO step
comes to the compute floor (the sum of its model passes, each timed alone).

Usage:
    .venv/bin/python bench/ppo_throughput.py [--config configs/demo.yaml] [--steps 5] [--set ppo.batch_size=64]

It reuses (or builds) the data, SFT and reward-model stages of the config, then times `--steps` PPO steps
after one warm-up step. Results print as a table and are appended to bench/results/ppo_throughput.jsonl.

With `ppo.value_model: head` (configs/hh-smollm2.yaml: the MiniLM reward model has another tokenizer) the values
come from a head on the policy's last hidden states: the policy pass returns them, and the value pass is the head
alone. With LoRA the policy passes run through the adapters, as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from minirlhf.config import load_config  # noqa: E402
from minirlhf.pipeline import run_pipeline  # noqa: E402
from minirlhf.ppo import core  # noqa: E402
from minirlhf.ppo.trainer import build_trainer  # noqa: E402
from minirlhf.scoring import score_texts  # noqa: E402


def timed(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    up = run_pipeline(cfg, ("data", "sft", "reward"))
    ckpt = Path(cfg.output_dir) / "bench" / "ppo-checkpoints"
    data_dir, sft_dir, reward_dir = (up[s].path(cfg.output_dir) for s in ("data", "sft", "reward"))
    trainer = build_trainer(cfg, data_dir, sft_dir, reward_dir, ckpt)
    trainer.args.steps = 10**9  # no learning-rate annealing to zero during the bench

    trainer.train_step()  # warm-up
    steps = [trainer.train_step() for _ in range(args.steps)]
    rollout_s = statistics.median(m["ppo/time/rollout_s"] for m in steps)
    update_s = statistics.median(m["ppo/time/update_s"] for m in steps)
    resp_tokens = statistics.median(m["ppo/response_length"] for m in steps) * cfg.ppo.batch_size

    # The compute floor: each model pass of one step, timed alone on the same batch shapes.
    batch = trainer.rollout()
    q_mask = (batch.query_ids != trainer.tokenizer.pad_token_id).long()
    head = trainer.value_head is not None  # values from the policy's hidden states, as in the rollout and update
    no_grad_forward = torch.no_grad()(trainer._forward)
    _, hidden = no_grad_forward(trainer.policy, batch.query_ids, q_mask, batch.response_ids, batch.response_mask,
                                hidden=head)
    passes = {
        "generate": timed(lambda: trainer.generate(batch.prompts)),
        "policy_fwd": timed(lambda: no_grad_forward(trainer.policy, batch.query_ids, q_mask, batch.response_ids,
                                                    batch.response_mask, hidden=head)),
        "ref_fwd": timed(lambda: no_grad_forward(trainer.ref_policy, batch.query_ids, q_mask, batch.response_ids,
                                                 batch.response_mask)),
        "value_fwd": timed(lambda: torch.no_grad()(trainer._values)(batch.query_ids, q_mask, batch.response_ids,
                                                                    batch.response_mask, hidden)),
        "reward_score": timed(lambda: score_texts(trainer.reward_model, trainer.rm_tokenizer, batch.prompts,
                                                  batch.responses)),
    }
    mb = torch.arange(cfg.ppo.mini_batch_size)

    def one_minibatch():
        logits, hidden = trainer._forward(trainer.policy, batch.query_ids[mb], q_mask[mb], batch.response_ids[mb],
                                          batch.response_mask[mb], hidden=head)
        values = trainer._values(batch.query_ids[mb], q_mask[mb], batch.response_ids[mb], batch.response_mask[mb],
                                 hidden)
        loss = core.logprobs_from_logits(logits, batch.response_ids[mb]).mean() + values.mean()
        loss.backward()
        trainer.optimizer.zero_grad()

    n_minibatches = cfg.ppo.num_ppo_epochs * cfg.ppo.batch_size // cfg.ppo.mini_batch_size
    passes["update_fwd_bwd"] = timed(one_minibatch) * n_minibatches
    floor = sum(passes.values())
    step_s = rollout_s + update_s
    row = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": args.config, "overrides": args.set,
        "threads": torch.get_num_threads(), "value_model": cfg.ppo.value_model, "lora": cfg.model.lora.enabled,
        "batch_size": cfg.ppo.batch_size, "step_s": step_s, "rollout_s": rollout_s, "update_s": update_s,
        "rollout_episodes_per_s": cfg.ppo.batch_size / rollout_s, "rollout_tokens_per_s": resp_tokens / rollout_s,
        "update_episodes_per_s": cfg.ppo.batch_size * cfg.ppo.num_ppo_epochs / update_s,
        "episodes_per_s": cfg.ppo.batch_size / step_s, "floor_s": floor, "step_over_floor": step_s / floor,
        **{f"pass/{k}_s": v for k, v in passes.items()},
    }
    for key, value in row.items():
        print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    with open(out / "ppo_throughput.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
