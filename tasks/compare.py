"""The comparison of the policy methods over seeds as a Prefect task (minirlhf.compare.run_compare).

Usage (inside a flow): `run_stage_task(plan_compare(cfg, points), run_id)` (flows/compare.py).
"""

from tasks.common import stage_task

compare_task = stage_task("compare")
