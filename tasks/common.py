"""What every stage task shares: the cache policy, where results go, and the store bookkeeping.

Usage (flows/pipeline.py does this for each stage):
    from tasks import STAGE_TASKS, run_stage_task
    sft = run_stage_task(STAGE_TASKS["sft"], cfg, {"data": data}, run_id)   # a StageResult

A stage task wraps the plain stage function of `minirlhf.pipeline` and adds caching, retries and logging,
nothing else. Its cache key (`prefect_cache_key`) is the stage's name, the library's output key (the
stage's config sections + seed, `STAGE_VERSIONS[stage]` and the sha256 of its upstream outputs; see
`minirlhf.pipeline.stage_dir`) and a digest of the source of every minirlhf module the stage uses.
Results (small `StageResult` records, never models) go to `<output_dir>/prefect-results`.

The files are the truth, the Prefect cache an optimisation (DEVELOPERS.md): `run_stage_task` reruns a
stage with `refresh_cache=True` when its output directory is missing or fails its manifest, and again
when a cached record no longer matches the digest of the output on disk (rewritten outside Prefect).
Call the tasks through `run_stage_task`; called bare, a task trusts its cache and writes its result to
Prefect's default result storage.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

import minirlhf
from minirlhf.config import PipelineConfig
from minirlhf.pipeline import PLANS, StoreLogger, log_result, recorded_stage, run_stage, stage_dir
from minirlhf.stage import StageResult, is_complete
from minirlhf.store import Store
from prefect import Task, get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.runtime import task_run

RESULTS_DIRNAME = "prefect-results"
PACKAGE_DIR = Path(minirlhf.__file__).resolve().parent


# ---- the cache key ------------------------------------------------------------------------------------
def _imported_modules(source: str) -> set[str]:
    """minirlhf modules a piece of source imports (anywhere in it: the stages import lazily)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from minirlhf.ppo import core` imports a module: try each name as one too.
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {m for m in found if m == "minirlhf" or m.startswith("minirlhf.")}


def _module_file(module: str) -> Path | None:
    base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module, not a module


def _stage_files(stage: str) -> list[Path]:
    """The source files of every minirlhf module the stage's run function reaches through imports, plus the
    data files next to them (minirlhf/data/facts.json is read by the gold annotator)."""
    pending = _imported_modules(textwrap.dedent(inspect.getsource(PLANS[stage].run)))
    seen: set[str] = set()
    files: set[Path] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        files.add(path)
        files |= {p for p in path.parent.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")}
        parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        pending |= parents | _imported_modules(path.read_text())  # package __init__s run on import too
    return sorted(files)


@cache  # per process: the code that runs is the code imported when the process started
def stage_code_digest(stage: str) -> str:
    """sha256 of the stage's run function and of the minirlhf source it uses (TASK_SOURCE alone misses
    edits in helper modules). Editing any of them misses the Prefect cache for this stage."""
    digest = hashlib.sha256(textwrap.dedent(inspect.getsource(PLANS[stage].run)).encode())
    for path in _stage_files(stage):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def prefect_cache_key(stage: str, cfg: PipelineConfig, upstream: dict[str, StageResult]) -> str:
    """`<stage>-<library key>-<code digest>`: readable as a file name under prefect-results."""
    library_key, _ = stage_dir(cfg, stage, upstream)  # name, STAGE_VERSIONS, config sections + seed, upstream sha256
    return f"{stage}-{library_key}-{stage_code_digest(stage)}"


@dataclass
class StageCachePolicy(CachePolicy):
    """Cache a stage task by `prefect_cache_key`. Inputs are read by name: `cfg` and `upstream`; any other
    task argument (the store's run id) is left out of the key on purpose."""

    stage: str = ""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str:
        return prefect_cache_key(self.stage, inputs["cfg"], inputs["upstream"])


def results_dir(cfg: PipelineConfig) -> Path:
    """Where the stage tasks' results go. A Path, not a str: Prefect reads a str as a storage block's name."""
    return Path(cfg.output_dir).resolve() / RESULTS_DIRNAME


def stage_task_options(stage: str) -> dict[str, Any]:
    """The @task options every stage task has (the PPO task adds its retries)."""
    return {"name": stage, "cache_policy": StageCachePolicy(stage=stage), "persist_result": True}


# ---- the task body: minirlhf.pipeline.run_stage plus the Prefect lineage ------------------------------
StageRun = Callable[[PipelineConfig, dict[str, Path], Path, StoreLogger], StageResult]


def run_recorded(stage: str, cfg: PipelineConfig, upstream: dict[str, StageResult], run_id: str,
                 run: StageRun | None = None) -> StageResult:
    """The body of a stage task: the library's `run_stage` (reuse complete output or run `run`, default the
    plan), recording the attempt (Prefect's run count), the task run id and the Prefect cache key."""
    logger = get_run_logger()
    logger.info("%s: attempt %d", stage, task_run.run_count)
    result = run_stage(cfg, stage, upstream, Store.for_output_dir(cfg.output_dir), run_id, attempt=task_run.run_count,
                       cache_key=prefect_cache_key(stage, cfg, upstream), task_run_id=task_run.id, run=run)
    logger.info("%s: %s, sha256 %s", stage, "reused" if result.cache_hit else f"done in {result.seconds:.1f} s", result.sha256[:12])
    return result


# ---- calling a stage task -----------------------------------------------------------------------------
def run_stage_task(stage_task: Task, cfg: PipelineConfig, upstream: dict[str, StageResult], run_id: str) -> StageResult:
    """Run one stage task inside a flow and return its StageResult; raises the task's exception if it failed.

    A Prefect cache hit is trusted only while the output it names is complete and unchanged on disk, and
    is recorded in stage_runs too (cache_hit true), so every flow run has one row per stage it used."""
    stage = stage_task.name
    _, out = stage_dir(cfg, stage, upstream)
    refresh = not is_complete(out)  # missing or corrupt output: recompute and overwrite the cache entry
    if refresh and out.exists():
        get_run_logger().warning("%s: output at %s fails its manifest; recomputing", stage, out)
    state = stage_task.with_options(result_storage=results_dir(cfg), refresh_cache=refresh)(
        cfg, upstream, run_id, return_state=True)
    result: StageResult = state.result()
    if state.name == "Cached" and result.sha256 != StageResult.from_dir(out).sha256:
        get_run_logger().warning("%s: cached record does not match the output on disk (rewritten outside this "
                                 "flow?); rerunning", stage)
        state = stage_task.with_options(result_storage=results_dir(cfg), refresh_cache=True)(
            cfg, upstream, run_id, return_state=True)
        result = state.result()
    if state.name == "Cached":
        result.cache_hit = True
        store = Store.for_output_dir(cfg.output_dir)
        with recorded_stage(store, run_id, stage, cfg, out, cache_key=prefect_cache_key(stage, cfg, upstream), cache_hit=True,
                            attempt=1, task_run_id=str(state.state_details.task_run_id)) as stage_run_id:
            log_result(store, stage_run_id, stage, result)
    return result
