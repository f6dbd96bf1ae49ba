"""The GRPO baseline as a Prefect task (minirlhf.grpo.run_grpo): GRPO on PPO's prompts with the same reward model.

Usage (inside a flow): `run_stage_task(plan(cfg, "grpo", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

grpo_task = stage_task("grpo")
