"""What every stage task shares: the cache key (the library's stage key, nothing else), where results go,
retries, and calling a stage task from a flow.

Usage (flows/pipeline.py does this for each stage):
    from tasks import run_stage_task
    spec = plan(cfg, "sft", results)          # minirlhf.pipeline: the key is computed here, once
    result = run_stage_task(spec, run_id)     # a StageResult

A stage task is Prefect's own pattern: `@task(cache_key_fn=...)` around one call, `minirlhf.pipeline.run_stage`,
which reuses the verified output on disk or computes it and records the attempt in the store. The cache key
is `spec.key`, so the Prefect cache, the output folder `<output_dir>/<stage>/<key>` and `stage_runs.cache_key`
agree. Results (small `StageResult` records, never models) are stored as JSON in `<output_dir>/prefect-results`.
The files are the truth, the Prefect cache an optimisation: `run_stage_task` refreshes the cache when the
output on disk is missing or fails its manifest, and records a cache hit from the verified files.

On a task runner with other processes or machines (Ray, flows/ray_runner.py), `submit_stage_task` hands the task to
the runner with a journal path: the task records into that file instead of DuckDB (minirlhf/journal.py), and
`collect_stage_task` waits for it and replays the journal into the store from the flow process, the one writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minirlhf.errors import PPOUnstable
from minirlhf.console import print_stage_line
from minirlhf.journal import Journal, ingest, journal_path
from minirlhf.pipeline import STAGES, StageSpec, record_reuse, run_stage
from minirlhf.stage import StageResult
from minirlhf.store import Store, StoreLocked
from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.runtime import task_run
from prefect.task_runners import TaskRunner
from prefect.tasks import exponential_backoff

RESULTS_DIRNAME = "prefect-results"
STORE_RETRIES = 2  # a stage whose store writes timed out behind a long reader is retried (minirlhf.store)
RETRY_BACKOFF_S = 1.0


def cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return parameters["spec"].key


def retry_condition(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry what a retry can fix: PPOUnstable (PPO resumes from its last good checkpoint at a smaller learning
    rate) and StoreLocked (a reader held the store for longer than store.lock_timeout_s). A bug or a missing file
    fails at once."""
    try:
        state.result()
    except (PPOUnstable, StoreLocked):
        return True
    except Exception:
        return False
    return False


def stage_task(name: str) -> Task:
    """The Prefect task of one stage: run_stage with Prefect's attempt number and task run id."""

    @task(name=name, cache_key_fn=cache_key, persist_result=True, result_serializer="json",
          retries=max(STAGES[name].retries, STORE_RETRIES), retry_delay_seconds=exponential_backoff(RETRY_BACKOFF_S),
          retry_condition_fn=retry_condition)
    def run(spec: StageSpec, run_id: str, journal: Path | None = None, threads: int | None = None) -> StageResult:
        store = Journal(journal) if journal else Store.for_config(spec.cfg)  # journal: on a worker (Ray)
        return run_stage(spec, store, run_id, attempt=task_run.run_count, task_run_id=task_run.id, threads=threads)

    return run


def results_dir(spec: StageSpec) -> Path:
    """Where stage task results go. A Path, not a str: Prefect reads a str as a storage block's name."""
    return Path(spec.cfg.output_dir).resolve() / RESULTS_DIRNAME


def run_stage_task(spec: StageSpec, run_id: str) -> StageResult:
    """Call the stage's task inside a flow. A cached answer is used only while the output on disk is verified,
    and is recorded in this run from those files (the task body, which records, did not run)."""
    from tasks import STAGE_TASKS

    on_disk = spec.find_output()  # the one verification of a complete output on this path
    state = STAGE_TASKS[spec.name].with_options(result_storage=results_dir(spec), refresh_cache=on_disk is None)(
        spec, run_id, return_state=True)
    result: StageResult = state.result()
    if result.run_id != run_id:  # Prefect's cache answered: record the verified output in this run
        store = Store.for_config(spec.cfg)
        result = record_reuse(spec, store, run_id, task_run_id=str(state.state_details.task_run_id), found=on_disk)
    return result


@dataclass
class Submitted:
    """A stage task handed to a task runner: what collecting it needs."""

    spec: StageSpec
    run_id: str
    future: PrefectFuture
    journal: Path
    on_disk: StageResult | None


def submit_stage_task(runner: TaskRunner, spec: StageSpec, run_id: str, threads: int | None = None) -> Submitted:
    """Hand the stage's task to `runner` (its placement options, such as prefect_ray's remote_options, set around
    this call). The task records into a journal in the output root, never into DuckDB, and computes with `threads`
    torch threads (the CPUs it holds)."""
    from tasks import STAGE_TASKS

    on_disk = spec.find_output()
    journal = journal_path(spec.cfg.output_dir, run_id, spec.name, spec.key)
    task = STAGE_TASKS[spec.name].with_options(result_storage=results_dir(spec), refresh_cache=on_disk is None)
    future = runner.submit(task, {"spec": spec, "run_id": run_id, "journal": journal, "threads": threads})
    return Submitted(spec, run_id, future, journal, on_disk)


def collect_stage_task(submitted: Submitted) -> StageResult:
    """Wait for a submitted stage task, replay its journal into the store (failed attempts too), then its result:
    the stage's exception if it failed, a cached answer recorded from the verified files as in run_stage_task."""
    spec, run_id = submitted.spec, submitted.run_id
    submitted.future.wait()
    store = Store.for_config(spec.cfg)
    ingest(store, submitted.journal)
    result: StageResult = submitted.future.result()
    if result.run_id != run_id:  # answered from Prefect's cache on the worker: nothing was journalled
        return record_reuse(spec, store, run_id, task_run_id=str(submitted.future.task_run_id),
                            found=submitted.on_disk)
    print_stage_line(spec.name, result, bar_shown=False)  # its progress bar was on the worker's console
    return result
