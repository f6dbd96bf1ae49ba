"""A language model as a second judge, as a Prefect task (minirlhf.judge.run_judge): agreement with the human labels,
then every policy against SFT.

Usage (inside a flow): `run_stage_task(plan(cfg, "judge", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

judge_task = stage_task("judge")
