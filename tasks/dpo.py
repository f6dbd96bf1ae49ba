"""The DPO baseline as a Prefect task: DPO on the reward model's preference pairs, from the SFT model.

Usage (inside a flow; see tasks/common.py for the cache key and why to go through run_stage_task):
    result = run_stage_task(dpo_task, cfg, {"data": data, "sft": sft}, run_id)
"""

from __future__ import annotations

from minirlhf.config import PipelineConfig
from minirlhf.stage import StageResult
from prefect import task

from tasks.common import run_recorded, stage_task_options


@task(**stage_task_options("dpo"))
def dpo_task(cfg: PipelineConfig, upstream: dict[str, StageResult], run_id: str) -> StageResult:
    return run_recorded("dpo", cfg, upstream, run_id)
