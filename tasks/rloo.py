"""The RLOO baseline as a Prefect task (minirlhf.rloo.run_rloo): RLOO on PPO's prompts with the same reward model.

Usage (inside a flow): `run_stage_task(plan(cfg, "rloo", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

rloo_task = stage_task("rloo")
