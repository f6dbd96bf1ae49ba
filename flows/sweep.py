"""The over-optimisation sweep as a Prefect flow: PPO at several KL coefficients on one SFT and reward model.

Usage:
    minirlhf sweep --config configs/demo.yaml --kl-coefs 0.5,0.2,0.1,0.05,0.02,0.01
    from flows.sweep import overoptimization_sweep
    result = overoptimization_sweep(load_config("configs/demo.yaml"), kl_coefs=[0.2, 0.05])   # the sweep StageResult
    prefect deployment run overoptimization-sweep/rlhf-sweep                                   # prefect.yaml

Data, SFT and the reward model are the pipeline's own cached tasks, so they are computed once (or reused
from `make demo`); each kl_coef is one PPO task and one evaluation task (SFT vs that PPO policy), cached by
its config like any other stage: a rerun, or a sweep that adds a coefficient, computes only what is new.
The DPO/RLOO baselines are left out of the sweep's evaluations: they do not depend on kl_coef.
The fit (minirlhf/sweep.py) lands in the store (views v_sweep_points, v_sweep_fits) and in the UI.
"""

from __future__ import annotations

from minirlhf.config import PipelineConfig
from minirlhf.pipeline import plan_sweep
from minirlhf.stage import StageResult
from minirlhf.store import Store
from minirlhf.sweep import point_config
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run

from flows.ray_runner import ppo_and_eval, run_waves, stage_runner
from tasks import run_stage_task

DEFAULT_KL_COEFS = [0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
SHARED_STAGES = ("data", "sft", "reward")  # do not depend on ppo.kl_coef


@flow(name="overoptimization-sweep", flow_run_name="{config.name}-sweep-seed{config.seed}")
def overoptimization_sweep(config: PipelineConfig = PipelineConfig(),
                           kl_coefs: list[float] = DEFAULT_KL_COEFS) -> StageResult:
    """PPO at each of `kl_coefs` from the same SFT and reward model; gold and proxy reward against d = sqrt(KL)."""
    if len(set(kl_coefs)) < 2:
        raise ValueError(f"kl_coefs: the fit needs at least two different coefficients, got {kl_coefs}")
    store = Store.for_config(config)
    coefs = sorted(set(kl_coefs), reverse=True)
    with stage_runner(config, [*SHARED_STAGES, "ppo", "eval"]) as runner, \
            store.run(config.model_dump(mode="json"), prefect_flow_run_id=flow_run.id, deployment=deployment.name,
                      parameters={"config": config.model_dump(mode="json"), "kl_coefs": list(kl_coefs)}) as run_id:
        shared = run_waves(runner, config, list(SHARED_STAGES), run_id, {})
        # locally one point after another; on Ray every point's PPO at once, then every point's evaluation
        pairs = ppo_and_eval(runner, [point_config(config, kl_coef) for kl_coef in coefs], shared, run_id)
        evals = {kl_coef: ev for kl_coef, (_, ev) in zip(coefs, pairs)}
        result = run_stage_task(plan_sweep(config, evals), run_id)  # the fit: seconds, in this process
    create_markdown_artifact(sweep_markdown(config, evals, result), key="overoptimization-sweep",
                             description="gold and proxy reward against d = sqrt(KL), "
                                         "fitted R(d) = d(alpha - beta log d)")
    return result


def sweep_markdown(config: PipelineConfig, evals: dict[float, StageResult], result: StageResult) -> str:
    lines = [f"# Over-optimisation sweep `{config.name}`", "", "| kl_coef | KL to SFT | gold reward | proxy reward |",
             "|---:|---:|---:|---:|"]
    for kl_coef, ev in evals.items():
        m = ev.metrics
        gold = m.get("eval/ppo/gold_reward")
        lines.append(f"| {kl_coef:g} | {m['eval/ppo/kl']:.2f} | {'' if gold is None else f'{gold:.3f}'} "
                     f"| {m['eval/ppo/proxy_reward']:.3f} |")
    lines += ["", "| reward | alpha | beta | R² | d* (peak) |", "|---|---:|---:|---:|---:|"]
    for reward in ("gold", "proxy"):
        f = {k.rsplit("/", 1)[1]: v for k, v in result.metrics.items() if k.startswith(f"sweep/fit/{reward}/")}
        if f:
            peak = f"{f['d_star']:.2f}" if "d_star" in f else "none (no peak)"
            lines.append(f"| {reward} | {f['alpha']:.3f} | {f['beta']:.3f} | {f['r2']:.2f} | {peak} |")
    lines += ["", f"Figure: `{result.path(config.output_dir)}/overoptimization.png`; "
                  "`minirlhf report` puts it in the report."]
    return "\n".join(lines)
