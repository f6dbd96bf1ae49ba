"""The reward-hacking calibration stage as a Prefect task (minirlhf.calibration.run_calibration): the gold-free
warning's thresholds chosen on some seeds of the sweep, scored against the gold onset on the others, and the
defence on against off.

Usage (inside a flow): `run_stage_task(plan_calibration(cfg, points, train_seeds), run_id)` (flows/calibration.py).
"""

from tasks.common import stage_task

calibration_task = stage_task("calibration")
