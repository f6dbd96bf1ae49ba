"""CAI-SL's fine-tuning on the revisions as a Prefect task (minirlhf.sl_cai.run_sl_cai).

Usage (inside a flow): `run_stage_task(plan(cfg, "sl_cai", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

sl_cai_task = stage_task("sl_cai")
