"""The reward-hacking calibration sweep as a Prefect flow: PPO at kl_coef x ppo.seed, with the defence off and on.

Usage:
    minirlhf calibrate --config configs/calibration.yaml            # 6 kl_coef x 3 seeds, defence off and on
    from flows.calibration import hacking_calibration
    result = hacking_calibration(load_config("configs/calibration.yaml"))    # the calibration StageResult

Data, SFT, the reward model and the ensemble are the pipeline's cached tasks (computed once). Every point is a PPO
task (`ppo.kl_coef`, `ppo.seed`) and an evaluation task (SFT against that PPO policy), cached by key like any stage:
a rerun computes only what is new. Undefended points optimise the proxy and only watch (signals logged, no
rollback); defended ones optimise `defence_reward` (the ensemble's conservative reward) with `hacking.rollback` on,
and each seed's defended runs warn by the thresholds chosen on the other seeds' watched runs
(minirlhf.calibration.held_out_warnings), so the defence, too, is measured out of sample. The calibration stage
(minirlhf/calibration.py) chooses the warning's thresholds on some seeds and reports recall, false alarms and lead
on the others (leave-one-seed-out by default, or `train_seeds`), and tabulates defended against undefended
(v_detector_calibration, v_defence).
"""

from __future__ import annotations

from minirlhf.calibration import held_out_warnings
from minirlhf.config import BASELINES, PipelineConfig, build_config
from minirlhf.pipeline import plan_calibration
from minirlhf.stage import StageResult
from minirlhf.store import Store
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run

from flows.ray_runner import ppo_and_eval, run_waves, stage_runner
from tasks import run_stage_task

DEFAULT_KL_COEFS = [0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
DEFAULT_SEEDS = [1, 2, 3]
SHARED_STAGES = ("data", "sft", "reward", "ensemble")  # do not depend on kl_coef or the RL seed


def point_config(config: PipelineConfig, kl_coef: float, seed: int, defended: bool,
                 defence_reward: str, warning: dict | None = None) -> PipelineConfig:
    """One point: PPO at `kl_coef` from `seed`, evaluated against SFT only; defended (with `warning`, the
    hacking thresholds and min_signals chosen without this seed) or only watched."""
    tree = config.model_dump(mode="json")
    tree["ppo"] |= {"kl_coef": kl_coef, "seed": seed, "reward": defence_reward if defended else "proxy"}
    tree["hacking"]["rollback"] = defended  # watched only: the warning's settings stay out of its key (pipeline.py)
    if defended and warning:
        tree["hacking"] |= warning
    for baseline in BASELINES:
        tree[baseline]["enabled"] = False
    return build_config(tree, source=f"calibration point kl_coef={kl_coef} seed={seed} defended={defended}")


@flow(name="hacking-calibration", flow_run_name="{config.name}-calibration")
def hacking_calibration(config: PipelineConfig = PipelineConfig(), kl_coefs: list[float] = DEFAULT_KL_COEFS,
                        seeds: list[int] = DEFAULT_SEEDS, train_seeds: list[int] | None = None,
                        defence_reward: str = "ensemble_mean_minus_std", defence: bool = True) -> StageResult:
    """Calibrate the gold-free warning against gold, and measure the defence."""
    if not config.ensemble.enabled:
        raise ValueError("the calibration needs the reward-model ensemble: set ensemble.enabled=true "
                         "(configs/calibration.yaml does)")
    train_seeds = list(train_seeds or [])  # none: leave-one-seed-out cross-validation
    if train_seeds and not set(train_seeds) < set(seeds):
        raise ValueError(f"train_seeds {train_seeds} must be some, not all, of seeds {seeds}: thresholds are "
                         "chosen on them and scored on the rest")
    store = Store.for_config(config)
    parameters = {"config": config.model_dump(mode="json"), "kl_coefs": kl_coefs, "seeds": seeds,
                  "train_seeds": train_seeds, "defence_reward": defence_reward, "defence": defence}
    with stage_runner(config, [*SHARED_STAGES, "ppo", "eval"]) as runner, \
            store.run(config.model_dump(mode="json"), prefect_flow_run_id=flow_run.id, deployment=deployment.name,
                      parameters=parameters) as run_id:
        shared = run_waves(runner, config, list(SHARED_STAGES), run_id, {})
        points, warnings = [], {}
        for defended in (False, True) if defence else (False,):
            if defended:  # each seed's defended runs warn by thresholds chosen on the other seeds' watched runs
                warnings = held_out_warnings(config, [{**p, "ppo_dir": p["ppo"].path(config.output_dir)}
                                                      for p in points], tuple(train_seeds))
            grid = [(seed, kl_coef) for seed in seeds for kl_coef in sorted(set(kl_coefs), reverse=True)]
            cfgs = [point_config(config, kl_coef, seed, defended, defence_reward, warnings.get(seed))
                    for seed, kl_coef in grid]
            # locally one run after another; on Ray every run of this pass at once, then their evaluations
            for (seed, kl_coef), (ppo, ev) in zip(grid, ppo_and_eval(runner, cfgs, shared, run_id)):
                points.append({"name": f"kl{kl_coef:g}-seed{seed}{'-defended' if defended else ''}",
                               "kl_coef": kl_coef, "seed": seed, "defended": defended, "ppo": ppo, "eval": ev})
        result = run_stage_task(plan_calibration(config, points, train_seeds), run_id)
    create_markdown_artifact(calibration_markdown(result), key="hacking-calibration",
                             description="the gold-free reward-hacking warning against the gold onset")
    return result


def calibration_markdown(result: StageResult) -> str:
    m = result.metrics
    names = sorted({k.split("/")[1] for k in m if k.startswith("calibration/")}, key=lambda n: (n == "combined", n))
    lines = ["# Reward hacking without gold: calibration on held-out seeds", "",
             "| detector | threshold | recall | false alarms | median lead (steps) |", "|---|---:|---:|---:|---:|"]
    for n in names:
        def get(k):
            return m.get(f"calibration/{n}/{k}")
        lead = get("median_lead")
        lines.append(f"| {n} | {get('threshold') or 0:.3g} | {get('recall') or 0:.2f} "
                     f"({int(get('n_hacked') or 0)} hacked) | {int(get('false_alarms') or 0)} "
                     f"of {int(get('n_healthy') or 0)} healthy | {'' if lead is None else f'{lead:+.1f}'} |")
    return "\n".join(lines)
