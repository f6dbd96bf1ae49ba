"""The PPO stage as a Prefect task (minirlhf.ppo.trainer.run_ppo), retried on PPOUnstable.

Each retry is attempt N of run_ppo: it resumes from the newest valid checkpoint at
`ppo.learning_rate * ppo.lr_scale_on_retry ** (N - 1)` (the library computes the scale from N).

Usage (inside a flow): `run_stage_task(plan(cfg, "ppo", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

ppo_task = stage_task("ppo")
