"""The SFT stage as a Prefect task (minirlhf.sft.run_sft): fine-tunes the base policy on the demonstrations.

Usage (inside a flow): `run_stage_task(plan(cfg, "sft", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

sft_task = stage_task("sft")
