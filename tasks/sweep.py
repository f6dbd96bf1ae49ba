"""The over-optimisation sweep's fit as a Prefect task: points, Gao et al.'s R(d) fit and the figure.

Usage (inside a flow; flows/sweep.py):
    result = sweep_task(cfg, {0.2: eval_result, 0.05: eval_result}, run_id)   # a StageResult

Not cached by Prefect on purpose: it reads a few JSON files and draws one figure (about a second), and the
library reuses a complete `<output_dir>/sweep/<key>` output anyway (minirlhf.sweep.record_sweep).
"""

from __future__ import annotations

from minirlhf.config import PipelineConfig
from minirlhf.stage import StageResult
from minirlhf.store import Store
from minirlhf.sweep import record_sweep
from prefect import task
from prefect.runtime import task_run


@task(name="sweep")
def sweep_task(cfg: PipelineConfig, evals: dict[float, StageResult], run_id: str) -> StageResult:
    return record_sweep(cfg, evals, Store.for_output_dir(cfg.output_dir), run_id, task_run_id=task_run.id)
