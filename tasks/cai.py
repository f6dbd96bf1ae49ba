"""Constitutional AI's critique and revision as a Prefect task (minirlhf.cai.run_cai).

Usage (inside a flow): `run_stage_task(plan(cfg, "cai", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

cai_task = stage_task("cai")
