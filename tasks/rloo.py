"""The RLOO baseline as a Prefect task: RLOO on PPO's prompts with the same reward model, from the SFT model.

Usage (inside a flow; see tasks/common.py for the cache key and why to go through run_stage_task):
    result = run_stage_task(rloo_task, cfg, {"data": data, "sft": sft, "reward": reward}, run_id)
"""

from __future__ import annotations

from minirlhf.config import PipelineConfig
from minirlhf.stage import StageResult
from prefect import task

from tasks.common import run_recorded, stage_task_options


@task(**stage_task_options("rloo"))
def rloo_task(cfg: PipelineConfig, upstream: dict[str, StageResult], run_id: str) -> StageResult:
    return run_recorded("rloo", cfg, upstream, run_id)
