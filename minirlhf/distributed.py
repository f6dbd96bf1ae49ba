"""Data parallelism over torch.distributed: W processes (ranks), each with its share of the batch. Every data-parallel
stage joins the process group here (minirlhf.launch; the TRL stages' accelerate finds it made); our PPO also uses
the reductions below.

Usage:
    torchrun --nproc-per-node 2 -m minirlhf.launch SPEC.json     # CPU: gloo; GPUs: nccl
    from minirlhf import distributed
    distributed.world_size(), distributed.rank(), distributed.is_main()
    lo, hi = distributed.shard(batch_size)              # this rank's episodes of the batch
    advantages = core.masked_whiten(advantages, mask, reduce=distributed.reducer())

Everything the update normalises over the batch is reduced over the ranks: the whitening of rewards and advantages
(sums and counts all-reduced), the token means of the losses (each rank divides its sum by the minibatch's tokens
over all ranks) and the gradients (summed), so W ranks with B/W episodes each take the step one process takes with
the B episodes (tests/test_ppo_ddp.py: weights equal within 1e-6). Without an initialised process group every
function is the one-process identity, and the trainer computes exactly what it computed before.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist



def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one rank that writes checkpoints, the stage output and the store."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR, ...): gloo on CPU, nccl with
    CUDA. False (and nothing done) outside torchrun or with one process."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def shard(batch_size: int) -> tuple[int, int]:
    """[lo, hi): this rank's rows of a batch of `batch_size` (a multiple of the world size)."""
    world = world_size()
    if batch_size % world:
        raise ValueError(f"ppo.batch_size ({batch_size}) must be a multiple of the number of processes ({world})")
    per_rank = batch_size // world
    return rank() * per_rank, (rank() + 1) * per_rank


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The sum (or max) of `x` over the ranks, as a new tensor; `x` itself with one process."""
    if not is_distributed():
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return out


def reducer() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What core's masked statistics take as `reduce`: None with one process (no work, the same arithmetic)."""
    return all_reduce if is_distributed() else None


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum each parameter's gradient over the ranks. A parameter no rank computed a gradient for keeps none (the
    optimiser skips it, as with one process); one that some rank did not reach (its minibatch share was empty)
    adds zeros there."""
    if not is_distributed():
        return
    reached = all_reduce(torch.tensor([float(p.grad is not None) for p in params], device=params[0].device), op="max")
    for p, any_rank in zip(params, reached.tolist()):
        if not any_rank:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    """Every rank starts from rank 0's weights (as DistributedDataParallel does at construction)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank; [obj] with one process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()
