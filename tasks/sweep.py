"""The over-optimisation sweep's fit as a Prefect task (minirlhf.sweep.run_sweep): points, Gao et al.'s fit, the figure.

Usage (inside a flow): `run_stage_task(plan(cfg, "sweep", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

sweep_task = stage_task("sweep")
