"""Run the stages in order without an orchestrator, skipping those whose output is already complete.

Usage:
    from minirlhf.config import load_config
    from minirlhf.pipeline import run_pipeline
    results = run_pipeline(load_config("configs/demo.yaml"))   # {"data": StageResult, "sft": ..., "reward": ...}

This is what `minirlhf run` calls. The Prefect flow (flows/) wires the same stage functions as cached,
retried tasks; both find a stage's output at `<output_dir>/<stage>/<key>` and trust the files, not a cache.
Every run, stage, metric and artifact is recorded in the DuckDB store at `<output_dir>/rlhf.duckdb`.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock

from minirlhf.config import PipelineConfig
from minirlhf.stage import StageResult, is_complete, stage_key
from minirlhf.store import Store

log = logging.getLogger("minirlhf")

ARTIFACT_KINDS = {"data": "dataset", "eval": "evaluation"}
STAGES = ("data", "sft", "reward", "ppo", "eval")


class StoreLogger:
    """A MetricLogger bound to one stage run of the store."""

    def __init__(self, store: Store, stage_run_id: str):
        self.store, self.stage_run_id = store, stage_run_id

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.store.log_metrics(self.stage_run_id, metrics, step=step)

    def log_samples(self, rows: list[dict], step: int = 0, policy: str | None = None) -> None:
        self.store.log_samples(self.stage_run_id, rows, step=step, policy=policy)

    def log_failure_event(self, kind: str, message: str, **kwargs) -> None:
        self.store.log_failure_event(self.stage_run_id, kind, message, **kwargs)


@dataclass
class StagePlan:
    """What a stage needs: the config sections its output depends on, its upstream stages, how to run it."""

    name: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...]
    run: Callable[..., StageResult]  # run(cfg, upstream_dirs: dict[str, Path], out_dir, logger)


def _run_data(cfg, up, out, logger):
    from minirlhf.data.prepare import run_data

    return run_data(cfg, out)


def _run_sft(cfg, up, out, logger):
    from minirlhf.sft import run_sft

    return run_sft(cfg, up["data"], out, logger)


def _run_reward(cfg, up, out, logger):
    from minirlhf.reward import run_reward

    return run_reward(cfg, up["data"], up.get("sft"), out, logger)


def _run_ppo(cfg, up, out, logger):
    from minirlhf.ppo.trainer import run_ppo

    return run_ppo(cfg, up["data"], up["sft"], up["reward"], out, logger)


def _run_eval(cfg, up, out, logger):
    from minirlhf.evaluate import run_eval

    return run_eval(cfg, up["data"], up["reward"], {"sft": up["sft"], "ppo": up["ppo"]}, out, logger)


PLANS = {
    "data": StagePlan("data", ("data",), (), _run_data),
    # `seed` is in every key via the top level; the model section decides the base model.
    "sft": StagePlan("sft", ("model", "sft"), ("data",), _run_sft),
    "reward": StagePlan("reward", ("model", "reward"), ("data", "sft"), _run_reward),
    "ppo": StagePlan("ppo", ("model", "ppo"), ("data", "sft", "reward"), _run_ppo),
    "eval": StagePlan("eval", ("model", "eval", "detect"), ("data", "sft", "reward", "ppo"), _run_eval),
}


def upstream_of(cfg: PipelineConfig, name: str) -> tuple[str, ...]:
    """A stage's inputs under this config: a reward model on another backbone does not need the SFT model."""
    if name == "reward" and cfg.model.reward_backbone != "sft":
        return ("data",)
    return PLANS[name].upstream


def stage_dir(cfg: PipelineConfig, name: str, upstream: dict[str, StageResult]) -> tuple[str, Path]:
    plan = PLANS[name]
    config_json = cfg.section_json(*plan.sections) + f'{{"seed": {cfg.seed}}}'
    key = stage_key(name, config_json, [upstream[u].sha256 for u in upstream_of(cfg, name)])
    return key, Path(cfg.output_dir) / name / key


@contextmanager
def recorded_stage(store: Store, run_id: str, name: str, cfg: PipelineConfig, out: Path, *, cache_key: str,
                   cache_hit: bool, attempt: int = 1, task_run_id: str | None = None) -> Iterator[str]:
    """One row in stage_runs: 'completed', or 'failed' with the exception as its cause (then re-raised)."""
    stage_run_id = store.start_stage(run_id, name, config=cfg.model_dump(mode="json"), cache_key=cache_key,
                                     cache_hit=cache_hit, attempt=attempt, task_run_id=task_run_id, output_dir=str(out))
    try:
        yield stage_run_id
    except BaseException as exc:
        store.finish_stage(stage_run_id, "failed", cause=f"{type(exc).__name__}: {exc}")
        raise
    store.finish_stage(stage_run_id, "completed")


def log_result(store: Store, stage_run_id: str, name: str, result: StageResult) -> None:
    """A stage's summary metrics (at its last step) and its output directory with its digest."""
    store.log_metrics(stage_run_id, result.metrics, step=result.step)
    store.log_artifact(stage_run_id, ARTIFACT_KINDS.get(name, "checkpoint"), result.output_dir, sha256=result.sha256)


def run_stage(cfg: PipelineConfig, name: str, upstream: dict[str, StageResult], store: Store, run_id: str,
              attempt: int = 1, *, cache_key: str | None = None, task_run_id: str | None = None,
              run: Callable[..., StageResult] | None = None) -> StageResult:
    """Run one stage (or reuse its complete output) and record it in the store. An orchestrator passes its
    own cache key, task run id and attempt; `run` replaces the plan's runner (e.g. PPO with a scaled lr)."""
    key, out = stage_dir(cfg, name, upstream)
    with stage_lock(out):
        cached = is_complete(out)
        with recorded_stage(store, run_id, name, cfg, out, cache_key=cache_key or key, cache_hit=cached, attempt=attempt,
                            task_run_id=task_run_id) as stage_run_id:
            if cached:
                result = StageResult.from_dir(out)
                result.cache_hit = True
                log.info("%s: complete output found at %s, skipped", name, out)
            else:
                log.info("%s: running (attempt %d) -> %s", name, attempt, out)
                inputs = {u: Path(upstream[u].output_dir) for u in upstream_of(cfg, name)}
                result = (run or PLANS[name].run)(cfg, inputs, out, StoreLogger(store, stage_run_id))
            log_result(store, stage_run_id, name, result)
    return result


def stage_lock(out: Path) -> FileLock:
    """One writer per stage output. Two runs of the same stage at once (two flows, or a flow and the CLI)
    would write the same directory and PPO checkpoints: the second waits, then reuses the first's output."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(out.parent / f".{out.name}.lock")


def needed_stages(cfg: PipelineConfig, stages: tuple[str, ...]) -> list[str]:
    """The stages asked for plus everything upstream of them, in pipeline order."""
    unknown = set(stages) - set(PLANS)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    needed = set(stages)
    for name in reversed(STAGES):
        if name in needed:
            needed |= set(upstream_of(cfg, name))
    return [n for n in STAGES if n in needed]


def run_pipeline(cfg: PipelineConfig, stages: tuple[str, ...] = STAGES, store: Store | None = None,
                 on_stage: Callable[[str, StageResult], None] | None = None) -> dict[str, StageResult]:
    store = store or Store.for_output_dir(cfg.output_dir)
    run_id = store.start_run(cfg.model_dump(mode="json"))
    results: dict[str, StageResult] = {}
    started = time.perf_counter()
    try:
        for name in needed_stages(cfg, stages):
            results[name] = run_stage(cfg, name, results, store, run_id)
            if on_stage:
                on_stage(name, results[name])
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
    store.finish_run(run_id, "completed")
    log.info("pipeline finished in %.1f s (run %s)", time.perf_counter() - started, run_id)
    return results
