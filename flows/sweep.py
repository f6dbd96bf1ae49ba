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

from minirlhf.config import PipelineConfig, build_config
from minirlhf.pipeline import upstream_of
from minirlhf.stage import StageResult
from minirlhf.store import Store
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run

from tasks import STAGE_TASKS, run_stage_task
from tasks.sweep import sweep_task

DEFAULT_KL_COEFS = [0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
SHARED_STAGES = ("data", "sft", "reward")  # do not depend on ppo.kl_coef


def point_config(config: PipelineConfig, kl_coef: float) -> PipelineConfig:
    """The pipeline config of one sweep point: its kl_coef, and no baselines in its evaluation."""
    tree = config.model_dump(mode="json")
    tree["ppo"]["kl_coef"] = kl_coef
    for baseline in ("dpo", "rloo"):
        if baseline in tree:
            tree[baseline]["enabled"] = False
    return build_config(tree, source=f"sweep point kl_coef={kl_coef}")


@flow(name="overoptimization-sweep", flow_run_name="{config.name}-sweep-seed{config.seed}")
def overoptimization_sweep(config: PipelineConfig = PipelineConfig(), kl_coefs: list[float] = DEFAULT_KL_COEFS) -> StageResult:
    """PPO at each of `kl_coefs` from the same SFT and reward model; gold and proxy reward against d = sqrt(KL)."""
    if len(set(kl_coefs)) < 2:
        raise ValueError(f"kl_coefs: the fit needs at least two different coefficients, got {kl_coefs}")
    store = Store.for_output_dir(config.output_dir)
    run_id = store.start_run(config.model_dump(mode="json"), prefect_flow_run_id=flow_run.id, deployment=deployment.name,
                             parameters={"config": config.model_dump(mode="json"), "kl_coefs": list(kl_coefs)})
    try:
        shared: dict[str, StageResult] = {}
        for name in SHARED_STAGES:
            shared[name] = run_stage_task(STAGE_TASKS[name], config, {u: shared[u] for u in upstream_of(config, name)}, run_id)
        evals: dict[float, StageResult] = {}
        for kl_coef in sorted(set(kl_coefs), reverse=True):
            cfg = point_config(config, kl_coef)
            ppo = run_stage_task(STAGE_TASKS["ppo"], cfg, {u: shared[u] for u in upstream_of(cfg, "ppo")}, run_id)
            results = {**shared, "ppo": ppo}
            evals[kl_coef] = run_stage_task(STAGE_TASKS["eval"], cfg, {u: results[u] for u in upstream_of(cfg, "eval")}, run_id)
        result = sweep_task(config, evals, run_id)
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
    store.finish_run(run_id, "completed")
    create_markdown_artifact(sweep_markdown(config, evals, result), key="overoptimization-sweep",
                             description="gold and proxy reward against d = sqrt(KL), fitted R(d) = d(alpha - beta log d)")
    return result


def sweep_markdown(config: PipelineConfig, evals: dict[float, StageResult], result: StageResult) -> str:
    lines = [f"# Over-optimisation sweep `{config.name}`", "", "| kl_coef | KL to SFT | gold reward | proxy reward |",
             "|---:|---:|---:|---:|"]
    for kl_coef, ev in evals.items():
        m = ev.metrics
        gold = m.get("eval/ppo/gold_reward")
        lines.append(f"| {kl_coef:g} | {m['eval/ppo/kl']:.2f} | {'' if gold is None else f'{gold:.3f}'} | {m['eval/ppo/proxy_reward']:.3f} |")
    lines += ["", "| reward | alpha | beta | R² | d* (peak) |", "|---|---:|---:|---:|---:|"]
    for reward in ("gold", "proxy"):
        f = {k.rsplit("/", 1)[1]: v for k, v in result.metrics.items() if k.startswith(f"sweep/fit/{reward}/")}
        if f:
            peak = f"{f['d_star']:.2f}" if "d_star" in f else "none (no peak)"
            lines.append(f"| {reward} | {f['alpha']:.3f} | {f['beta']:.3f} | {f['r2']:.2f} | {peak} |")
    lines += ["", f"Figure: `{result.output_dir}/overoptimization.png`; `minirlhf report` puts it in the report."]
    return "\n".join(lines)
