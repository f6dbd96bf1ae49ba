"""Run the stages in order without an orchestrator, skipping those whose output is already complete.

Usage:
    from minirlhf.config import load_config
    from minirlhf.pipeline import run_pipeline
    results = run_pipeline(load_config("configs/demo.yaml"))   # {"data": StageResult, "sft": ..., "reward": ...}
    enabled_stages(cfg)   # STAGES less the baselines switched off (`dpo.enabled: false`, `rloo.enabled: false`)

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

ARTIFACT_KINDS = {"data": "dataset", "eval": "evaluation", "sweep": "sweep"}
STAGES = ("data", "sft", "reward", "ppo", "dpo", "rloo", "eval")
POLICY_STAGES = ("ppo", "dpo", "rloo")  # what the eval stage compares with SFT, when enabled


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


def _run_dpo(cfg, up, out, logger):
    from minirlhf.dpo import run_dpo

    return run_dpo(cfg, up["data"], up["sft"], out, logger)


def _run_rloo(cfg, up, out, logger):
    from minirlhf.rloo import run_rloo

    return run_rloo(cfg, up["data"], up["sft"], up["reward"], out, logger)


def _run_eval(cfg, up, out, logger):
    from minirlhf.evaluate import run_eval

    policies = {"sft": up["sft"], **{name: up[name] for name in POLICY_STAGES if name in up}}
    return run_eval(cfg, up["data"], up["reward"], policies, out, logger)


PLANS = {
    "data": StagePlan("data", ("data",), (), _run_data),
    # `seed` is in every key via the top level; the model section decides the base model.
    "sft": StagePlan("sft", ("model", "sft"), ("data",), _run_sft),
    "reward": StagePlan("reward", ("model", "reward"), ("data", "sft"), _run_reward),
    "ppo": StagePlan("ppo", ("model", "ppo"), ("data", "sft", "reward"), _run_ppo),
    "dpo": StagePlan("dpo", ("model", "dpo"), ("data", "sft"), _run_dpo),
    "rloo": StagePlan("rloo", ("model", "rloo"), ("data", "sft", "reward"), _run_rloo),
    # Its key holds the digest of every policy it compares: switching a baseline on or off changes it.
    "eval": StagePlan("eval", ("model", "eval", "detect"), ("data", "sft", "reward", *POLICY_STAGES), _run_eval),
}


def is_enabled(cfg: PipelineConfig, name: str) -> bool:
    """A stage whose config section says `enabled: false` (the DPO and RLOO baselines) is not run."""
    return getattr(getattr(cfg, name, None), "enabled", True)


def enabled_stages(cfg: PipelineConfig) -> tuple[str, ...]:
    return tuple(name for name in STAGES if is_enabled(cfg, name))


def upstream_of(cfg: PipelineConfig, name: str) -> tuple[str, ...]:
    """A stage's inputs under this config: a reward model on another backbone does not need the SFT model;
    the eval stage does not wait for (or compare) a disabled baseline."""
    if name == "reward" and cfg.model.reward_backbone != "sft":
        return ("data",)
    return tuple(u for u in PLANS[name].upstream if is_enabled(cfg, u))


# Fields of a shared section that only one stage reads: the other stages leave them out of their key, so trying
# another reward backbone does not retrain SFT (the reward model reaches PPO, RLOO and eval through its digest).
KEYED_ONLY_BY = {("model", "reward_backbone"): "reward"}


def stage_config_json(cfg: PipelineConfig, name: str) -> str:
    """The part of the config a stage's output depends on: its sections (less fields only another stage reads), seed."""
    exclude: dict[str, set[str]] = {}
    for (section, field), owner in KEYED_ONLY_BY.items():
        if owner != name:
            exclude.setdefault(section, set()).add(field)
    return cfg.section_json(*PLANS[name].sections, exclude=exclude) + f'{{"seed": {cfg.seed}}}'


def stage_dir(cfg: PipelineConfig, name: str, upstream: dict[str, StageResult]) -> tuple[str, Path]:
    config_json = stage_config_json(cfg, name)
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
    inputs = {u: Path(upstream[u].output_dir) for u in upstream_of(cfg, name)}
    return reuse_or_run(store, run_id, name, cfg, out, lambda logger: (run or PLANS[name].run)(cfg, inputs, out, logger),
                        cache_key=cache_key or key, attempt=attempt, task_run_id=task_run_id)


def reuse_or_run(store: Store, run_id: str, name: str, cfg: PipelineConfig, out: Path,
                 compute: Callable[[StoreLogger], StageResult], *, cache_key: str, attempt: int = 1,
                 task_run_id: str | None = None, on_reuse: Callable[[StoreLogger], None] | None = None) -> StageResult:
    """The protocol of every stage output: under its lock, reuse `out` if it is complete (then `on_reuse` may log
    again what the computing run logged per step), else `compute(logger)` it; one stage_runs row either way."""
    with stage_lock(out):
        cached = is_complete(out)
        with recorded_stage(store, run_id, name, cfg, out, cache_key=cache_key, cache_hit=cached, attempt=attempt,
                            task_run_id=task_run_id) as stage_run_id:
            logger = StoreLogger(store, stage_run_id)
            if cached:
                result = StageResult.from_dir(out)
                result.cache_hit = True
                log.info("%s: complete output found at %s, skipped", name, out)
                if on_reuse is not None:
                    on_reuse(logger)
            else:
                log.info("%s: running (attempt %d) -> %s", name, attempt, out)
                result = compute(logger)
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
    disabled = [name for name in stages if not is_enabled(cfg, name)]
    if disabled:
        raise ValueError(f"stage(s) {disabled} are disabled in this config; leave them out of the stages asked for, "
                         f"or enable them (--set {disabled[0]}.enabled=true)")
    needed = set(stages)
    for name in reversed(STAGES):
        if name in needed:
            needed |= set(upstream_of(cfg, name))
    return [n for n in STAGES if n in needed]


def run_pipeline(cfg: PipelineConfig, stages: tuple[str, ...] | None = None, store: Store | None = None,
                 on_stage: Callable[[str, StageResult], None] | None = None) -> dict[str, StageResult]:
    """Run `stages` (default: every enabled stage) and what they need, reusing complete outputs."""
    stages = enabled_stages(cfg) if stages is None else stages
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
