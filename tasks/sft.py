"""The SFT stage as a Prefect task: fine-tunes the base policy on the data stage's demonstrations.

Usage (inside a flow; see tasks/common.py for the cache key and why to go through run_stage_task):
    result = run_stage_task(sft_task, cfg, upstream, run_id)
"""

from __future__ import annotations

from minirlhf.config import PipelineConfig
from minirlhf.stage import StageResult
from prefect import task

from tasks.common import run_recorded, stage_task_options


@task(**stage_task_options("sft"))
def sft_task(cfg: PipelineConfig, upstream: dict[str, StageResult], run_id: str) -> StageResult:
    return run_recorded("sft", cfg, upstream, run_id)
