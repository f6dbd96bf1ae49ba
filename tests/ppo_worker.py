"""Run PPO in a child process for the resume tests; optionally SIGKILL itself right after a given step.

python tests/ppo_worker.py OUTPUT_DIR KILL_AT_STEP [--set ...]   (KILL_AT_STEP 0 = never)
"""

import os
import signal
import sys

from minirlhf.config import load_config
from minirlhf.pipeline import plan
from minirlhf.ppo.trainer import run_ppo
from minirlhf.store import Store, StoreLogger


class KillingLogger(StoreLogger):
    def __init__(self, store, stage_run_id, kill_at):
        super().__init__(store, stage_run_id)
        self.kill_at = kill_at

    def log_metrics(self, metrics, step=0):
        super().log_metrics(metrics, step)
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a real, unclean death of the training process


def main():
    out, kill_at, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    cfg = load_config(None, overrides + [f"output_dir={out}"])
    results = {}
    for name in ("data", "sft", "reward"):
        results[name] = plan(cfg, name, results).find_output()
    ppo_out = plan(cfg, "ppo", results).out_dir
    store = Store.for_output_dir(out)
    run_id = store.start_run(cfg.model_dump(mode="json"))
    stage_run_id = store.start_stage(run_id, "ppo", output_dir=str(ppo_out))
    dirs = [results[name].path(out) for name in ("data", "sft", "reward")]
    result = run_ppo(cfg, *dirs, ppo_out, KillingLogger(store, stage_run_id, kill_at))
    store.finish_stage(stage_run_id, "completed")
    print("RESUMED_FROM", int(result.metrics["ppo/resumed_from_step"]))


if __name__ == "__main__":
    main()
