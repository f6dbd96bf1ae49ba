"""The reward-model stage as a Prefect task (minirlhf.reward.run_reward): trains and evaluates it on preference pairs.

Usage (inside a flow): `run_stage_task(plan(cfg, "reward", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

reward_task = stage_task("reward")
