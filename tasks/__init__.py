"""Prefect tasks around the stage functions of minirlhf: one module per stage, shared parts in common.py.

Usage:
    from tasks import run_stage_task
    result = run_stage_task(plan(cfg, "sft", {"data": data}), run_id)
"""

from tasks.cai import cai_task
from tasks.calibration import calibration_task
from tasks.compare import compare_task
from tasks.common import (RESULTS_DIRNAME, Submitted, cache_key, collect_stage_task, retry_condition, run_stage_task,
                          stage_task, submit_stage_task)
from tasks.data import data_task
from tasks.dpo import dpo_task
from tasks.ensemble import ensemble_task
from tasks.eval import eval_task
from tasks.grpo import grpo_task
from tasks.interpret import interpret_task
from tasks.judge import judge_task
from tasks.ppo import ppo_task
from tasks.reward import reward_task
from tasks.rlaif import rlaif_task
from tasks.rloo import rloo_task
from tasks.sft import sft_task
from tasks.sl_cai import sl_cai_task
from tasks.sweep import sweep_task

STAGE_TASKS = {"data": data_task, "sft": sft_task, "cai": cai_task, "sl_cai": sl_cai_task, "rlaif": rlaif_task,
               "reward": reward_task,
               "ensemble": ensemble_task, "interpret": interpret_task, "ppo": ppo_task, "dpo": dpo_task,
               "rloo": rloo_task, "grpo": grpo_task, "eval": eval_task, "judge": judge_task, "sweep": sweep_task,
               "calibration": calibration_task, "compare": compare_task}

__all__ = ["RESULTS_DIRNAME", "STAGE_TASKS", "Submitted", "cache_key", "collect_stage_task", "retry_condition",
           "run_stage_task", "stage_task", "submit_stage_task"]
