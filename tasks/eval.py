"""The evaluation stage as a Prefect task: SFT vs PPO (and the enabled DPO/RLOO baselines) on held-out prompts (proxy, gold, KL, win rates).

Usage (inside a flow; see tasks/common.py for the cache key and why to go through run_stage_task):
    result = run_stage_task(eval_task, cfg, upstream, run_id)
"""

from __future__ import annotations

from minirlhf.config import PipelineConfig
from minirlhf.stage import StageResult
from prefect import task

from tasks.common import run_recorded, stage_task_options


@task(**stage_task_options("eval"))
def eval_task(cfg: PipelineConfig, upstream: dict[str, StageResult], run_id: str) -> StageResult:
    return run_recorded("eval", cfg, upstream, run_id)
