"""The reward-model ensemble stage as a Prefect task (minirlhf.ensemble.run_ensemble): reward models beside the proxy
for the gold-free hacking signals and the conservative reward. Runs only with ensemble.enabled.

Usage (inside a flow): `run_stage_task(plan(cfg, "ensemble", results), run_id)` (tasks/common.py).
"""

from tasks.common import stage_task

ensemble_task = stage_task("ensemble")
