"""The DPO baseline as a Prefect task (minirlhf.dpo.run_dpo): DPO on the preference pairs, from the SFT model.

Usage (inside a flow): `run_stage_task(plan(cfg, "dpo", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

dpo_task = stage_task("dpo")
