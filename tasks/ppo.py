"""The PPO stage as a Prefect task that retries an unstable run from its last good checkpoint.

Usage (inside a flow; see tasks/common.py for the cache key and why to go through run_stage_task):
    result = run_stage_task(ppo_task, cfg, {"data": data, "sft": sft, "reward": reward}, run_id)
    result.metrics["ppo/resumed_from_step"]   # > 0 when an attempt resumed from a checkpoint

Only `PPOUnstable` (NaN/inf loss, KL ceiling, ratio blow-up) is retried: `PPO_RETRIES` times, after
1 s, 2 s, ... (exponential backoff). Each attempt calls `run_ppo` again with the same output directory, so
the trainer resumes from its newest valid checkpoint, with the learning rate scaled by
`cfg.ppo.lr_scale_on_retry ** (attempt - 1)`. Every attempt is a row in stage_runs (attempt, status, cause).
Any other exception fails the task at once: retrying a bug or a missing file does not help.

Test hook: the environment variable MINIRLHF_TEST_PPO_NAN_AT_STEP=N poisons the loss at step N of an
attempt that did not resume (`run_ppo(inject_nan_at_step=N)`), to exercise the retry path end to end.
It is read here only, is not part of any config or cache key, and is never set outside tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from minirlhf.config import PipelineConfig
from minirlhf.pipeline import StoreLogger
from minirlhf.ppo.trainer import PPOUnstable, run_ppo
from minirlhf.stage import StageResult
from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from tasks.common import run_recorded, stage_task_options

PPO_RETRIES = 2
RETRY_BACKOFF_S = 1.0
TEST_NAN_AT_STEP_ENV = "MINIRLHF_TEST_PPO_NAN_AT_STEP"


def retry_if_unstable(task: Task, task_run: TaskRun, state: State) -> bool:
    """retry_condition_fn: retry only PPOUnstable (the trainer resumes from its last good checkpoint)."""
    try:
        state.result()
    except PPOUnstable:
        return True
    except Exception:
        return False
    return False


@task(**stage_task_options("ppo"), retries=PPO_RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=RETRY_BACKOFF_S),
      retry_condition_fn=retry_if_unstable)
def ppo_task(cfg: PipelineConfig, upstream: dict[str, StageResult], run_id: str) -> StageResult:
    attempt = task_run.run_count  # 1 on the first attempt
    lr_scale = cfg.ppo.lr_scale_on_retry ** (attempt - 1)
    nan_at_step = os.environ.get(TEST_NAN_AT_STEP_ENV)

    def run(cfg: PipelineConfig, inputs: dict[str, Path], out: Path, logger: StoreLogger) -> StageResult:
        # minirlhf.pipeline's PPO plan calls run_ppo without lr_scale: call it directly, with the same inputs.
        return run_ppo(cfg, inputs["data"], inputs["sft"], inputs["reward"], out, logger, lr_scale=lr_scale,
                       inject_nan_at_step=int(nan_at_step) if nan_at_step else None)

    return run_recorded("ppo", cfg, upstream, run_id, run=run)
