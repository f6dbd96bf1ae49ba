"""The data stage as a Prefect task (minirlhf.data.prepare.run_data): the embedded task, or HH-RLHF rows.

Usage (inside a flow): `run_stage_task(plan(cfg, "data", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

data_task = stage_task("data")
