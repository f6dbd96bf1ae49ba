"""Our PPO trainer for language models: rollout, score, advantages, update; checkpoints and resume.

Usage:
    from minirlhf.ppo.trainer import run_ppo, PPOUnstable
    result = run_ppo(cfg, data_dir, sft_dir, reward_dir, out_dir, logger)   # resumes if checkpoints exist

It follows Ziegler et al. 2019 and Huang et al. 2024 ("The N+ implementation details of RLHF with PPO"):
a frozen reference policy (the SFT model), a per-token KL penalty, the reward-model score added at the
last response token, GAE, whitened advantages, clipped policy and value losses, and a value model
initialised from the reward model (or a value head on the policy). The math lives in `core.py`. Dropout is off in
every model (Huang et al. 2024), rollout passes run in eval mode, and sampling ignores the checkpoint's
generation_config.json (minirlhf.generation): the logprobs the update recomputes are those it sampled from.

Checkpoints (every `ppo.checkpoint_every` steps) go to `<out_dir>.checkpoints/step-NNNNNN/`: policy and
value weights as safetensors, optimiser, scheduler, KL controller, RNG states (torch CPU and CUDA, the prompt
sampler, Python's `random` with gauss_next) and the step in a `torch.load(weights_only=True)` file, a sha256
manifest and a COMPLETE marker written last; the directory is renamed into place, and only the newest
`keep_checkpoints` are kept. A run started again with the
same key resumes from the newest valid checkpoint and, on a deterministic CPU, reproduces the metrics
and weights of an uninterrupted run exactly. A corrupt or partial checkpoint is skipped with a warning.

The instability guard raises `PPOUnstable` (NaN/inf loss, KL above `ppo.max_kl`, a minibatch approxkl above
`ppo.max_approxkl`) naming the cause and the last good checkpoint, so an orchestrator can retry from there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from minirlhf.config import PipelineConfig
from minirlhf.data.gold import gold_or_none
from minirlhf.data.task import read_jsonl
from minirlhf.errors import PPOUnstable
from minirlhf.generation import (decode_responses, encode_prompts, position_ids_from, response_logits, sample_responses,
                                 sampling_config)
from minirlhf.models import (add_lora, disable_dropout, is_peft, load_policy, load_reward_model, merge_lora,
                             resolve_device)
from minirlhf.hacking import BatchView
from minirlhf import distributed
from minirlhf.ppo import core
from minirlhf.ppo.monitor import HackingMonitor, RewardHackingOnset
from minirlhf.scoring import Ensemble, conservative_reward, score_texts
from minirlhf.stage import (MetricLogger, NullLogger, StageResult, atomic_dir, load_output, output_problems,
                            stage_output)

__all__ = ["PPOTrainer", "PPOUnstable", "Rollout", "build_trainer", "checkpoint_dir_for", "run_ppo"]

log = logging.getLogger("minirlhf.ppo")

TRAINER_STATE = "trainer_state.pt"
CURVE = "curve.jsonl"  # every step's metrics, in checkpoints and in the output (the detectors read it)
VALUE_HEAD = "value_head.safetensors"
MONITOR = "monitor.json"  # the hacking monitor's baseline batch (minirlhf.ppo.monitor)
TIMINGS = "ppo/time/"  # per-step timings go to the store only: stage outputs hold no timings (minirlhf.stage)
# Test hook: MINIRLHF_TEST_PPO_NAN_AT_STEP=N poisons the loss at step N of a first attempt (run_ppo), to exercise
# the guard and the retry path end to end through any orchestrator. Never set outside tests; in no key.
TEST_NAN_AT_STEP_ENV = "MINIRLHF_TEST_PPO_NAN_AT_STEP"


@dataclass
class Rollout:
    """One batch of episodes and everything the update needs, all (batch, ...) tensors on CPU/GPU."""

    query_ids: torch.Tensor  # (batch, query_len), left-padded
    response_ids: torch.Tensor  # (batch, resp_len), padded after EOS
    response_mask: torch.Tensor  # (batch, resp_len), 1 up to and including EOS
    logprobs: torch.Tensor  # (batch, resp_len)
    ref_logprobs: torch.Tensor  # (batch, resp_len)
    values: torch.Tensor  # (batch, resp_len)
    scores: torch.Tensor  # (batch,) the reward PPO maximises: the proxy's scores, or the ensemble's conservative one
    has_eos: torch.Tensor  # (batch,) bool
    prompts: list[str]
    responses: list[str]
    gold: list[float | None]
    intents: list[str]
    proxy_scores: torch.Tensor | None = None  # (batch,) the proxy reward model's scores
    member_z: torch.Tensor | None = None  # (k, batch) the ensemble's standardised scores, the proxy's first
    heldout_z: torch.Tensor | None = None  # (batch,) the held-out reward model's standardised scores
    entropy: float | None = None  # mean per-token entropy of the policy on its samples


class PPOTrainer:
    def __init__(self, cfg: PipelineConfig, policy, ref_policy, value_model, reward_model, tokenizer, rm_tokenizer,
                 prompts: list[dict], checkpoint_dir: Path, logger: MetricLogger | None = None, lr_scale: float = 1.0,
                 ensemble: Ensemble | None = None, ood_threshold: float | None = None):
        self.cfg, self.args = cfg, cfg.ppo
        self.ensemble = ensemble
        self.monitor = HackingMonitor(cfg.hacking, ood_threshold)  # gold-free signals, every step (minirlhf.hacking)
        self.policy, self.ref_policy, self.reward_model = policy, ref_policy, reward_model
        self.tokenizer, self.rm_tokenizer = tokenizer, rm_tokenizer
        self.prompts = prompts
        self.checkpoint_dir = Path(checkpoint_dir)
        # Data parallel (minirlhf.distributed): this rank's rows [lo, hi) of every batch; only rank 0 records.
        self.lo, self.hi = distributed.shard(self.args.batch_size)
        self.reduce = distributed.reducer()  # None with one process: every statistic as before
        self.logger = (logger or NullLogger()) if distributed.is_main() else NullLogger()
        self.device = next(policy.parameters()).device
        # Dropout off in every model PPO runs (Huang et al. 2024; TRL's disable_dropout_in_model): the old logprobs
        # and values come from no-dropout passes, so the update's passes must be the same functions, or the ratio of
        # the first minibatch is not 1 (GPT-2's dropout 0.1: ratio_max 1.063, approxkl 8.3e-4 before any step).
        for model in (policy, ref_policy, value_model):
            if model is not None:
                disable_dropout(model)
        for model in (ref_policy, reward_model):
            model.eval().requires_grad_(False)
        if self.args.value_model == "separate":
            self.value_model, self.value_head = value_model, None
            value_params = list(value_model.parameters())
        else:  # a value head on the policy's last hidden state (shares the policy's trunk)
            self.value_model = None
            self.value_head = torch.nn.Linear(policy.config.hidden_size, 1).to(self.device)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
            value_params = list(self.value_head.parameters())
        # With LoRA only the adapters require grad: the frozen base weights stay out of the optimiser.
        self.params = [p for p in policy.parameters() if p.requires_grad] + value_params
        distributed.broadcast_parameters(self.params)  # every rank starts from rank 0's weights
        self.base_lr = self.args.learning_rate * lr_scale
        self.optimizer = torch.optim.AdamW(self.params, lr=self.base_lr, eps=1e-5)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_lambda)
        if self.args.adaptive_kl:
            self.kl_ctl = core.AdaptiveKLController(self.args.kl_coef, self.args.kl_target, self.args.kl_horizon)
        else:
            self.kl_ctl = core.FixedKLController(self.args.kl_coef)
        self.generator = torch.Generator().manual_seed(rl_seed(cfg))  # which prompts each step samples
        self.generation_config = sampling_config(tokenizer, self.args.temperature, self.args.max_new_tokens)
        self.step = 0
        self.curve: list[dict] = []  # [{'step': 1, 'ppo/kl': ...}, ...], restored on resume
        self.last_good_checkpoint: Path | None = None
        # {"warning_step", "rollback_step"} once the warning rolled this run back (hacking.rollback_kl_scale: it then
        # trains on, and the warning stops nothing more); in checkpoints, so a resumed run knows it
        self.rolled_back: dict[str, int] = {}
        self.inject_nan_at_step: int | None = None  # testing aid: see run_ppo

    def lr_lambda(self, step: int) -> float:
        """Linear decay to zero over the run (Huang et al. 2024, detail on learning-rate annealing)."""
        return max(0.0, 1.0 - step / self.args.steps)

    # ---- model passes -------------------------------------------------------------------------------
    def _forward(self, model, query_ids, query_mask, response_ids, response_mask, hidden: bool = False):
        """Logits over the response tokens at the sampling temperature (and the last hidden states if asked)."""
        return response_logits(model, query_ids, query_mask, response_ids, response_mask, self.args.temperature, hidden)

    def _values(self, query_ids, query_mask, response_ids, response_mask, policy_hidden=None):
        """V(s_t) for each response position t: the state is the query plus the response before token t."""
        if self.value_head is not None:
            return self.value_head(policy_hidden).squeeze(-1)
        input_ids = torch.cat([query_ids, response_ids], 1)
        attention_mask = torch.cat([query_mask, (response_mask > 0).long()], 1)
        backbone = getattr(self.value_model, self.value_model.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from(attention_mask)).last_hidden_state
        q = query_ids.shape[1]
        return self.value_model.score(hidden[:, q - 1 : -1]).squeeze(-1)  # (batch, resp_len)

    # ---- 1. rollout ---------------------------------------------------------------------------------
    def generate(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                    torch.Tensor]:
        query_ids, query_mask = encode_prompts(self.tokenizer, prompts, self.cfg.model.max_prompt_length, self.device)
        response_ids, response_mask, has_eos = sample_responses(self.policy, self.tokenizer, query_ids, query_mask,
                                                                self.generation_config)
        return query_ids, query_mask, response_ids, response_mask, has_eos

    @torch.no_grad()
    def rollout(self) -> Rollout:
        # Every rank draws the same prompts (one generator state) and rolls out its own share of them.
        idx = torch.randint(len(self.prompts), (self.args.batch_size,), generator=self.generator).tolist()
        rows = [self.prompts[i] for i in idx[self.lo : self.hi]]
        prompts = [r["prompt"] for r in rows]
        # Eval mode for every rollout pass; `update` switches back to train mode. With dropout off both modes compute
        # the same function, but a value model left in train mode by the last update once gave two identical passes
        # 0.196 apart: be explicit.
        self.policy.eval()
        if self.value_model is not None:
            self.value_model.eval()
        query_ids, query_mask, response_ids, response_mask, has_eos = self.generate(prompts)
        logits, hidden = self._forward(self.policy, query_ids, query_mask, response_ids, response_mask,
                                       hidden=self.value_head is not None)
        logprobs = core.logprobs_from_logits(logits, response_ids)
        entropy = float(core.masked_mean(core.entropy_from_logits(logits), response_mask, reduce=self.reduce))
        ref_logits, _ = self._forward(self.ref_policy, query_ids, query_mask, response_ids, response_mask)
        ref_logprobs = core.logprobs_from_logits(ref_logits, response_ids)
        values = self._values(query_ids, query_mask, response_ids, response_mask, hidden)
        # 2. score: the reward model reads text + EOS exactly as it was trained (minirlhf.reward.score_texts)
        responses = decode_responses(self.tokenizer, response_ids, response_mask)
        proxy = score_texts(self.reward_model, self.rm_tokenizer, prompts, responses).to(self.device)
        member_z = heldout_z = None
        scores = proxy
        if self.ensemble is not None:
            member_z = self.ensemble.member_scores(prompts, responses, proxy)
            heldout_z = self.ensemble.heldout_scores(prompts, responses)
            if self.args.reward != "proxy":  # the defence: a conservative reward (Coste et al. 2024)
                scores = conservative_reward(member_z, self.args.reward, self.args.uncertainty_coef,
                                             self.ensemble.proxy_mean, self.ensemble.proxy_std).to(self.device)
        return Rollout(query_ids, response_ids, response_mask, logprobs, ref_logprobs, values, scores, has_eos,
                       prompts, responses, [gold_or_none(p, r) for p, r in zip(prompts, responses)],
                       [r.get("intent", "") for r in rows], proxy, member_z, heldout_z, entropy)

    # ---- 3. advantages and 4. update ----------------------------------------------------------------
    def advantages(self, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = batch.response_mask
        rewards, non_score_rewards, kl = core.shape_rewards(
            batch.scores, batch.logprobs, batch.ref_logprobs, mask, self.kl_ctl.value, self.args.kl_estimator,
            self.args.missing_eos_penalty, batch.has_eos,
        )
        # Whitened over the whole batch: with several ranks, over every rank's share (sums and counts all-reduced).
        if self.args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False, reduce=self.reduce)
        advantages, returns = core.compute_gae(rewards, batch.values, mask, self.args.gamma, self.args.lam)
        advantages = core.masked_whiten(advantages, mask, reduce=self.reduce)
        return advantages, returns, non_score_rewards, kl

    def update(self, batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        self.policy.train()
        if self.value_model is not None:
            self.value_model.train()
        stats: dict[str, list[float]] = {}
        query_mask = (batch.query_ids != self.tokenizer.pad_token_id).long()
        for _ in range(self.args.num_ppo_epochs):
            # One permutation of the whole batch on every rank; each rank trains on its episodes of each minibatch.
            order = torch.randperm(self.args.batch_size, generator=self.generator)
            for mb in order.split(self.args.mini_batch_size):
                mine = mb[(mb >= self.lo) & (mb < self.hi)] - self.lo  # all of mb with one process
                for name, value in self.minibatch_step(batch, mine, query_mask, advantages, returns).items():
                    stats.setdefault(name, []).append(value)
        self.scheduler.step()
        return {k: (max(v) if k.endswith("_max") else sum(v) / len(v)) for k, v in stats.items()}

    def minibatch_step(self, batch: Rollout, mb: torch.Tensor, query_mask: torch.Tensor, advantages: torch.Tensor,
                       returns: torch.Tensor) -> dict[str, float]:
        """One optimiser step on the minibatch rows `mb` of this rank's share. With several ranks the losses are
        this rank's token sums over the minibatch's tokens on all ranks, and the gradients are summed: the step
        one process takes on the whole minibatch."""
        mask = batch.response_mask[mb]
        count = None if self.reduce is None else distributed.all_reduce(mask.bool().sum())
        if len(mb):
            logits, hidden = self._forward(self.policy, batch.query_ids[mb], query_mask[mb], batch.response_ids[mb],
                                           mask, hidden=self.value_head is not None)
            new_logprobs = core.logprobs_from_logits(logits, batch.response_ids[mb])
            new_values = self._values(batch.query_ids[mb], query_mask[mb], batch.response_ids[mb], mask, hidden)
            pg_loss, pg_stats = core.policy_loss(new_logprobs, batch.logprobs[mb], advantages[mb], mask,
                                                 self.args.cliprange, count)
            vf_loss, vf_stats = core.value_loss(new_values, batch.values[mb], returns[mb], mask,
                                                self.args.cliprange_value, count)
            loss = pg_loss + self.args.vf_coef * vf_loss
            with torch.no_grad():
                entropy = core.masked_mean(core.entropy_from_logits(logits), mask, count=count)
        else:  # none of this minibatch's episodes are on this rank: it adds zeros to the sums
            zero = torch.zeros((), device=self.device)
            loss = pg_loss = vf_loss = entropy = zero
            pg_stats, vf_stats = {"approxkl": zero, "clipfrac": zero, "ratio_max": zero + 1}, {"clipfrac": zero}
        if self.inject_nan_at_step == self.step + 1:
            loss = loss * float("nan")
        shown = {"ppo/policy/loss": pg_loss, "ppo/value/loss": vf_loss, "ppo/policy/approxkl": pg_stats["approxkl"],
                 "ppo/policy/clipfrac": pg_stats["clipfrac"], "ppo/value/clipfrac": vf_stats["clipfrac"],
                 "ppo/entropy": entropy, "loss": loss}
        values = torch.stack([v.detach().float() for v in shown.values()])
        if self.reduce is not None:  # the whole minibatch's values, the same on every rank (so is the guard's call)
            values = distributed.all_reduce(values)
            pg_stats = {**pg_stats, "ratio_max": distributed.all_reduce(pg_stats["ratio_max"].detach(), "max")}
        totals = dict(zip(shown, values.tolist()))
        self.guard_loss(totals.pop("loss"), {"approxkl": totals["ppo/policy/approxkl"],
                                             "ratio_max": float(pg_stats["ratio_max"])})
        self.optimizer.zero_grad()
        if len(mb):
            loss.backward()
        distributed.sum_gradients(self.params)
        torch.nn.utils.clip_grad_norm_(self.params, self.args.max_grad_norm)
        self.optimizer.step()
        return {**totals, "ppo/policy/ratio_max": float(pg_stats["ratio_max"])}

    def guard_loss(self, loss: float, pg_stats: dict[str, float]) -> None:
        """Raise PPOUnstable on a non-finite loss or a minibatch approxkl above ppo.max_approxkl (values of the whole
        minibatch, so every rank decides alike)."""
        if not math.isfinite(loss):
            raise PPOUnstable("nan_loss", self.step + 1, self.last_good_checkpoint, f"loss={loss}")
        # approxkl over the minibatch, not a ratio: one rare token's ratio can be huge in healthy runs
        # (clipping handles it).
        approxkl = float(pg_stats["approxkl"])
        if not math.isfinite(approxkl) or approxkl > self.args.max_approxkl:
            raise PPOUnstable("approxkl_ceiling", self.step + 1, self.last_good_checkpoint,
                              f"approxkl={approxkl:.3g} > {self.args.max_approxkl}")

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        # 1. rollout (and 2. score, inside)
        batch = self.rollout()
        t1 = time.perf_counter()
        # 3. advantages
        advantages, returns, non_score_rewards, kl = self.advantages(batch)
        mean_kl = self.batch_mean(core.masked_sum(kl, batch.response_mask, dim=1))
        if not math.isfinite(mean_kl) or mean_kl > self.args.max_kl:
            raise PPOUnstable("kl_ceiling", self.step + 1, self.last_good_checkpoint,
                              f"kl={mean_kl:.3g} > {self.args.max_kl}")
        # 4. update
        update_stats = self.update(batch, advantages, returns)
        t2 = time.perf_counter()
        self.step += 1
        view = self.batch_view(batch)  # the whole batch's samples and scores (every rank's share)
        gold = [g for part in distributed.gather(batch.gold) for g in part if g is not None]
        metrics = {
            "ppo/kl": mean_kl,
            "ppo/kl_coef": self.kl_ctl.value,
            "ppo/proxy_reward": self.batch_mean(batch.proxy_scores),
            **({"ppo/reward": self.batch_mean(batch.scores)} if self.args.reward != "proxy" else {}),
            "ppo/non_score_reward": self.batch_mean(non_score_rewards.sum(1)),
            "ppo/response_length": self.batch_mean(batch.response_mask.sum(1).float()),
            "ppo/eos_rate": self.batch_mean(batch.has_eos.float()),
            "ppo/value/explained_variance": float(core.explained_variance(batch.values, returns, batch.response_mask,
                                                                          self.reduce)),
            "ppo/lr": self.scheduler.get_last_lr()[0],
            "ppo/time/rollout_s": t1 - t0,
            "ppo/time/update_s": t2 - t1,
            **update_stats,
        }
        if gold:
            metrics["ppo/gold_reward"] = sum(gold) / len(gold)
        # 5. watch: the gold-free reward-hacking signals of this rollout (step 1's is the baseline)
        metrics |= self.monitor.observe(self.step, view, mean_kl)
        self.kl_ctl.update(mean_kl, self.args.batch_size)
        self.logger.log_metrics(metrics, step=self.step)
        # The curve holds what the run computed, not how long it took: an exact resume reproduces it byte for byte.
        self.curve.append({"step": self.step, **{k: float(v) for k, v in metrics.items() if not k.startswith(TIMINGS)}})
        if self.step % self.args.sample_every == 0 or self.step == 1:
            self.logger.log_samples(
                [{"prompt": p, "response": r, "proxy_reward": float(s), "gold_reward": g, "intent": i}
                 for p, r, s, g, i in list(zip(batch.prompts, batch.responses, batch.scores.tolist(), batch.gold,
                                               batch.intents))[:4]],
                step=self.step, policy="ppo",
            )
        return metrics

    def batch_mean(self, x: torch.Tensor) -> float:
        """The mean over the whole batch of a per-episode tensor (batch,), every rank's share counted."""
        if self.reduce is None:
            return float(x.mean())
        return float(distributed.all_reduce(x.sum().float())) / self.args.batch_size

    @staticmethod
    def batch_view(batch: Rollout) -> BatchView:
        """What the gold-free signals read of a rollout: samples and scores, no model and no gold. With several
        ranks, every rank's share in rank order, on every rank: the signals, and the warning, agree."""
        members = None if batch.member_z is None else batch.member_z.tolist()  # (k, batch)
        heldout = None if batch.heldout_z is None else batch.heldout_z.tolist()
        parts = distributed.gather((batch.responses, batch.prompts, batch.proxy_scores.tolist(), members, heldout))
        if len(parts) == 1:
            return BatchView(batch.responses, batch.prompts, parts[0][2], members, heldout, batch.entropy)
        joined = [sum((part[i] for part in parts), []) for i in range(3)]
        members = None if members is None else [sum((part[3][k] for part in parts), []) for k in range(len(members))]
        heldout = None if heldout is None else sum((part[4] for part in parts), [])
        return BatchView(*joined, members, heldout, batch.entropy)

    # ---- checkpoints --------------------------------------------------------------------------------
    def state(self, rank_rngs: list[dict] | None = None) -> dict:
        """Everything but the weights. `rank_rngs`: each rank's RNG states, in rank order (data parallel)."""
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(),
            "rolled_back": self.rolled_back,
            **rng_states(),  # this rank's (rank 0's): what one process saves
            "generator": self.generator.get_state(),
            **({"rank_rng": rank_rngs} if rank_rngs and len(rank_rngs) > 1 else {}),
        }

    def save_checkpoint(self) -> Path:
        """Rank 0 writes the checkpoint, with every rank's RNG states; the others wait until it is in place."""
        final = self.checkpoint_dir / f"step-{self.step:06d}"
        rank_rngs = distributed.gather(rng_states())  # every rank takes part; rank 0 keeps them
        self.last_good_checkpoint = final
        if not distributed.is_main():
            distributed.barrier()
            return final
        with atomic_dir(final) as tmp:  # the stage-output protocol: manifest, COMPLETE, rename
            self.policy.save_pretrained(tmp / "policy")
            if self.value_model is not None:
                self.value_model.save_pretrained(tmp / "value")
            else:
                save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()}, tmp / VALUE_HEAD)
            torch.save(self.state(rank_rngs), tmp / TRAINER_STATE)
            write_curve(self.curve, tmp / CURVE)
            self.monitor.save(tmp / MONITOR)
        for old in self.checkpoints()[self.args.keep_checkpoints :]:
            shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()
        return final

    def checkpoints(self) -> list[Path]:
        """Checkpoint directories, newest first (valid or not)."""
        return sorted(self.checkpoint_dir.glob("step-*"), reverse=True) if self.checkpoint_dir.exists() else []

    def resume(self) -> Path | None:
        """Load the newest valid checkpoint; skip (with a warning) any that is partial or corrupt. The learning
        rate stays this trainer's (a retry's scaled one), never the checkpoint's: scales do not compound."""
        for ckpt in self.checkpoints():
            problems = output_problems(ckpt)
            if problems:
                log.warning("skipping checkpoint %s: %s", ckpt, "; ".join(problems[:3]))
                continue
            self._load(ckpt)
            self.scheduler.base_lrs = [self.base_lr] * len(self.optimizer.param_groups)
            for group in self.optimizer.param_groups:
                group["initial_lr"] = self.base_lr
                group["lr"] = self.base_lr * self.lr_lambda(self.scheduler.last_epoch)
            self.last_good_checkpoint = ckpt
            log.info("resumed from %s (step %d)", ckpt, self.step)
            return ckpt
        return None

    def _load(self, ckpt: Path) -> None:
        if is_peft(self.policy):  # a LoRA policy checkpoints its adapters only (adapter_model.safetensors)
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.policy, load_file(ckpt / "policy" / "adapter_model.safetensors"))
        else:
            self.policy.load_state_dict(load_file(ckpt / "policy" / "model.safetensors"), strict=False)
        if self.value_model is not None:
            self.value_model.load_state_dict(load_file(ckpt / "value" / "model.safetensors"), strict=False)
        else:
            self.value_head.load_state_dict(load_file(ckpt / VALUE_HEAD))
        state = torch.load(ckpt / TRAINER_STATE, weights_only=True)  # tensors and plain containers only
        self.step = int(state["step"])
        self.curve = read_curve(ckpt / CURVE)
        self.monitor = HackingMonitor(self.cfg.hacking, self.monitor.ood_threshold)
        self.monitor.restore(ckpt / MONITOR, self.curve)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.rolled_back = dict(state.get("rolled_back", {}))
        world = distributed.world_size()
        saved_world = len(state.get("rank_rng", [None]))
        if saved_world != world:
            raise ValueError(f"checkpoint {ckpt} was written by {saved_world} process(es), this run has {world}: "
                             "resume it with as many processes (each rank's RNG states are in it)")
        rngs = state["rank_rng"][distributed.rank()] if world > 1 else state
        self.generator.set_state(state["generator"])
        set_rng_states(rngs, ckpt)

    def train(self) -> dict[str, float]:
        """Train to `ppo.steps`, checkpointing; returns the last step's metrics (those of the curve when a run
        resumed at its final checkpoint and had nothing left to train)."""
        from minirlhf.training import progress_bar

        # The stage's line: `ppo     ███ 6/6 [00:02<00:00, proxy -0.94, gold -0.56, kl 0.09]` (gold: embedded task only)
        # One progress line: rank 0's (the others' would interleave with it)
        bar = progress_bar("ppo", self.args.steps, self.step) if distributed.is_main() else tqdm(disable=True)
        with bar:
            while self.step < self.args.steps:
                metrics = self.train_step()
                if self.cfg.hacking.rollback and not self.rolled_back and self.monitor.warning.fired_at == self.step:
                    raise self.monitor.onset()
                if self.step % self.args.checkpoint_every == 0 or self.step == self.args.steps:
                    self.save_checkpoint()
                shown = {"proxy": metrics["ppo/proxy_reward"], "gold": metrics.get("ppo/gold_reward"),
                         "kl": metrics["ppo/kl"]}
                bar.set_postfix_str(", ".join(f"{k} {v:.2f}" for k, v in shown.items() if v is not None), refresh=False)
                bar.update(1)
        return {k: v for k, v in self.curve[-1].items() if k != "step"} if self.curve else {}

    def train_on_after_rollback(self, kl_scale: float) -> dict[str, float]:
        """After a rollback to a checkpoint: drop the abandoned steps (curve rows and checkpoints past this step),
        multiply kl_coef by `kl_scale` and train on to `ppo.steps` from the rolled-back policy. A stronger anchor
        where the weak one let the policy drift (Gao et al. 2023: gold is a function of the KL travelled); the
        warning is still logged but stops nothing more."""
        if distributed.is_main():
            for ckpt in self.checkpoints():
                if int(ckpt.name.split("-")[1]) > self.step:
                    shutil.rmtree(ckpt, ignore_errors=True)
        distributed.barrier()
        self.curve = [row for row in self.curve if row["step"] <= self.step]
        self.kl_ctl.value *= kl_scale
        # A new objective: Adam's moments measured the old one's gradients, and the first gradients of the new one
        # (a larger KL penalty, new returns for the value head) divided by those small second moments gave steps
        # many times the usual size (2026-12-05: approxkl 1.6 at the first step on, at any learning-rate scale).
        self.optimizer.state.clear()
        self.save_checkpoint()  # the step rolled back to, as trained on from: a retry resumes in this phase
        return self.train()


def rng_states() -> dict:
    """This process's RNG states: torch's CPU generator, the CUDA ones (sampling on a GPU draws from them) and
    Python's `random`."""
    return {"torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
            "python_rng": python_rng_state()}


def set_rng_states(saved: dict, ckpt: Path) -> None:
    """Restore what `rng_states` saved (in checkpoint `ckpt`)."""
    torch.set_rng_state(saved["torch_rng"])
    if "cuda_rng" in saved and torch.cuda.is_available():  # a CPU checkpoint (or an older one) has none
        cuda_states = saved["cuda_rng"]
        if len(cuda_states) != torch.cuda.device_count():
            log.warning("checkpoint %s holds RNG states for %d CUDA devices, this machine has %d: restoring the first "
                        "%d", ckpt, len(cuda_states), torch.cuda.device_count(),
                        min(len(cuda_states), torch.cuda.device_count()))
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    set_python_rng_state(saved["python_rng"])


def python_rng_state() -> dict:
    """`random.getstate()` in types `torch.load(weights_only=True)` reads back: version, the Mersenne Twister
    words as a list, and gauss_next (the second normal `random.gauss` already drew, float or None)."""
    version, internal, gauss_next = random.getstate()
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def set_python_rng_state(saved: dict | list) -> None:
    """Restore what `python_rng_state` saved; a checkpoint from before it holds the words only (a list)."""
    if isinstance(saved, list):
        random.setstate((3, tuple(saved), None))
    else:
        random.setstate((int(saved["version"]), tuple(saved["internal"]), saved["gauss_next"]))


def write_curve(curve: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in curve))


def read_curve(path: Path) -> list[dict]:
    """A PPO run's per-step metrics (a checkpoint from before curves were saved has none: empty)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def checkpoint_dir_for(out_dir: Path) -> Path:
    out_dir = Path(out_dir).resolve()
    return out_dir.parent / f"{out_dir.name}.checkpoints"


def build_trainer(cfg: PipelineConfig, data_dir: Path, sft_dir: Path, reward_dir: Path, checkpoint_dir: Path,
                  logger: MetricLogger | None = None, lr_scale: float = 1.0,
                  ensemble_dir: Path | None = None) -> PPOTrainer:
    seed = rl_seed(cfg)
    torch.manual_seed(seed)
    random.seed(seed)
    device = resolve_device(cfg.model.device)
    tokenizer, policy = load_policy(str(sft_dir))
    # LoRA (model.lora.enabled): the policy trains adapters only; the reference stays a separate frozen copy.
    policy = add_lora(policy, cfg.model.lora, "CAUSAL_LM").to(device)
    _, ref_policy = load_policy(str(sft_dir))
    ref_policy.to(device)
    rm_tokenizer, reward_model = load_reward_model(str(reward_dir))
    reward_model.to(device)
    if cfg.ppo.value_model == "separate" and rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            "ppo.value_model='separate' initialises the value model from the reward model, which needs the policy's "
            f"tokenizer; this reward model ({reward_dir}) has another. "
            "Set ppo.value_model=head (a value head on the policy)."
        )
    value_model = load_reward_model(str(reward_dir))[1].to(device) if cfg.ppo.value_model == "separate" else None
    prompts = read_jsonl(Path(data_dir) / "rl_prompts.jsonl")
    reward_record = load_output(reward_dir)  # verified upstream; its score statistics scale the ensemble and OOD
    proxy_stats = {k.split("/", 1)[1]: v for k, v in (reward_record.metrics if reward_record else {}).items()
                   if k in ("reward/score_mean", "reward/score_std", "reward/chosen_p99")}
    if cfg.ppo.reward != "proxy" and ensemble_dir is None:
        raise ValueError(f"ppo.reward={cfg.ppo.reward} needs the reward-model ensemble: set ensemble.enabled=true")
    ensemble = (Ensemble.load(ensemble_dir, proxy_stats, cfg.reward.max_length, device)
                if ensemble_dir is not None else None)
    trainer = PPOTrainer(cfg, policy, ref_policy, value_model, reward_model, tokenizer, rm_tokenizer, prompts,
                         checkpoint_dir, logger, lr_scale, ensemble, proxy_stats.get("chosen_p99"))
    if distributed.rank() > 0:  # each rank samples its own episodes; rank 0 draws what one process draws
        torch.manual_seed(seed + distributed.rank())
        random.seed(seed + distributed.rank())
    return trainer


def rl_seed(cfg: PipelineConfig) -> int:
    """PPO's own seed (ppo.seed), else the pipeline's."""
    return cfg.seed if cfg.ppo.seed is None else cfg.ppo.seed


def retry_lr_scale(cfg: PipelineConfig, attempt: int) -> float:
    """The learning-rate scale of attempt N (1 = the first): `ppo.lr_scale_on_retry ** (N - 1)`."""
    return cfg.ppo.lr_scale_on_retry ** (attempt - 1)


def run_ppo(cfg: PipelineConfig, data_dir: Path, sft_dir: Path, reward_dir: Path, out_dir: Path,
            logger: MetricLogger | None = None, attempt: int = 1, inject_nan_at_step: int | None = None,
            ensemble_dir: Path | None = None) -> StageResult:
    """Train (or resume) PPO and write the final policy to `out_dir`. Attempt N > 1 is a retry after PPOUnstable:
    it resumes from the newest valid checkpoint, or starts over, at `retry_lr_scale(cfg, N)` times the learning
    rate. With hacking.rollback, a gold-free warning stops the run and the output is the policy of the last
    checkpoint from before the signals rose (rollback); with hacking.rollback_kl_scale too, PPO trains on from that
    checkpoint to ppo.steps with kl_coef times the scale. `inject_nan_at_step` (testing aid; default from
    $MINIRLHF_TEST_PPO_NAN_AT_STEP) poisons the loss at that step of a first attempt. Started as `ppo.nproc` ranks
    (minirlhf.launch), each rank rolls out its share of the batch and rank 0 writes checkpoints and the output."""
    logger = logger or NullLogger()
    if inject_nan_at_step is None and os.environ.get(TEST_NAN_AT_STEP_ENV):
        inject_nan_at_step = int(os.environ[TEST_NAN_AT_STEP_ENV])
    started = time.perf_counter()
    trainer = build_trainer(cfg, data_dir, sft_dir, reward_dir, checkpoint_dir_for(out_dir), logger,
                            lr_scale=retry_lr_scale(cfg, attempt), ensemble_dir=ensemble_dir)
    resumed = trainer.resume()
    trainer.inject_nan_at_step = inject_nan_at_step if attempt == 1 else None
    try:
        metrics = trainer.train()
    except RewardHackingOnset as warning:
        metrics = roll_back(trainer, warning, logger)
        if cfg.hacking.rollback_kl_scale and trainer.step > 0:  # train on from the checkpoint, anchored harder
            metrics = trainer.train_on_after_rollback(cfg.hacking.rollback_kl_scale)
    result = StageResult("ppo", metrics={k: float(v) for k, v in metrics.items()}, step=trainer.step)
    result.metrics["ppo/resumed_from_step"] = float(int(resumed.name.split("-")[1]) if resumed else 0)
    result.metrics |= {f"ppo/{k}": float(v) for k, v in trainer.rolled_back.items()}  # warning_step, rollback_step
    if trainer.rolled_back and trainer.step > trainer.rolled_back["rollback_step"]:  # it trained on after the rollback
        result.metrics["ppo/kl_coef_after_rollback"] = float(trainer.kl_ctl.value)
    if not distributed.is_main():  # the other ranks hold the same weights: rank 0 writes the output
        return result
    with stage_output(out_dir, result) as tmp:
        merge_lora(trainer.policy).save_pretrained(tmp)  # LoRA adapters folded in: a plain checkpoint
        trainer.tokenizer.save_pretrained(tmp)
        write_curve(trainer.curve, tmp / CURVE)
        result.seconds = time.perf_counter() - started
    return result


def roll_back(trainer: PPOTrainer, warning: RewardHackingOnset, logger: MetricLogger) -> dict[str, float]:
    """The warning fired: record it, then put the policy back to the newest valid checkpoint from before the
    signals rose (step < warning.rose_at), or to the SFT policy when there is none. The curve keeps every step
    trained (the output shows what the warning saw); returns the metrics of the step rolled back to."""
    curve = list(trainer.curve)
    earlier = [c for c in trainer.checkpoints() if int(c.name.split("-")[1]) < warning.rose_at
               and not output_problems(c)]
    if earlier:
        trainer._load(earlier[0])
    else:  # nothing saved before the rise: the frozen reference is the SFT policy PPO started from
        trainer.policy, trainer.step = trainer.ref_policy, 0
    trainer.curve = curve
    trainer.rolled_back = {"warning_step": warning.step, "rollback_step": trainer.step}
    scale = trainer.cfg.hacking.rollback_kl_scale
    then = (f"; training on to step {trainer.args.steps} at kl_coef x {scale:g}" if scale and earlier else "")
    message = (f"{warning}; phrase spreading: {warning.phrase!r}; rolled back to step {trainer.step}"
               + ("" if earlier else " (the SFT policy: no checkpoint from before the rise)") + then)
    log.warning(message)
    # the steps rolled back, as the run saw them (a run that trains on replaces them in the curve and the store)
    abandoned = [{k: row[k] for k in ("step", "ppo/kl", "ppo/proxy_reward", "ppo/gold_reward") if k in row}
                 for row in curve if row["step"] > trainer.step]
    logger.log_failure_event("reward_hacking_onset", message, step=warning.step, severity="error",
                             evidence={"signals": warning.signals, "rose_at": warning.rose_at,
                                       "rollback_step": trainer.step, "phrase": warning.phrase,
                                       "rollback_kl_scale": scale if earlier else None, "abandoned": abandoned},
                             examples=warning.examples)
    kept = next((row for row in curve if row["step"] == trainer.step), {})
    return {k: v for k, v in kept.items() if k != "step"}
