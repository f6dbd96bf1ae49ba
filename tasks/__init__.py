"""Prefect tasks around the stage functions of minirlhf: one module per stage, shared parts in common.py.

Usage:
    from tasks import STAGE_TASKS, run_stage_task
    result = run_stage_task(STAGE_TASKS["sft"], cfg, {"data": data}, run_id)
"""

from tasks.common import StageCachePolicy, prefect_cache_key, results_dir, run_stage_task, stage_code_digest
from tasks.data import data_task
from tasks.dpo import dpo_task
from tasks.eval import eval_task
from tasks.ppo import ppo_task
from tasks.reward import reward_task
from tasks.rloo import rloo_task
from tasks.sft import sft_task

STAGE_TASKS = {"data": data_task, "sft": sft_task, "reward": reward_task, "ppo": ppo_task, "dpo": dpo_task, "rloo": rloo_task,
               "eval": eval_task}

__all__ = ["STAGE_TASKS", "StageCachePolicy", "prefect_cache_key", "results_dir", "run_stage_task", "stage_code_digest",
           "data_task", "sft_task", "reward_task", "ppo_task", "dpo_task", "rloo_task", "eval_task"]
