"""The evaluation stage as a Prefect task (minirlhf.evaluate.run_eval): SFT vs the RLHF policies on held-out prompts.

Usage (inside a flow): `run_stage_task(plan(cfg, "eval", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

eval_task = stage_task("eval")
