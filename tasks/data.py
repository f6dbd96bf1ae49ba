"""The data stage as a Prefect task: writes the embedded task (or reads HH-RLHF) into the stage's output.

Usage (inside a flow; see tasks/common.py for the cache key and why to go through run_stage_task):
    result = run_stage_task(data_task, cfg, upstream, run_id)
"""

from __future__ import annotations

from minirlhf.config import PipelineConfig
from minirlhf.stage import StageResult
from prefect import task

from tasks.common import run_recorded, stage_task_options


@task(**stage_task_options("data"))
def data_task(cfg: PipelineConfig, upstream: dict[str, StageResult], run_id: str) -> StageResult:
    return run_recorded("data", cfg, upstream, run_id)
