"""AI feedback as a Prefect task (minirlhf.rlaif.run_rlaif): the training pairs relabelled by a feedback model.

Usage (inside a flow): `run_stage_task(plan(cfg, "rlaif", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

rlaif_task = stage_task("rlaif")
