"""What the reward model computes, as a Prefect task (minirlhf.interpret.run_interpret): probes per layer and
token attributions.

Usage (inside a flow): `run_stage_task(plan(cfg, "interpret", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

interpret_task = stage_task("interpret")
