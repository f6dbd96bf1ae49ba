"""The comparison of the policy methods over seeds as a Prefect flow: PPO, DPO, RLOO and GRPO, each trained from
several seeds, evaluated on the same prompts, with 95% bootstrap intervals.

Usage:
    minirlhf compare --config configs/demo.yaml --seeds 1,2,3                 # SFT and the reward model fixed
    minirlhf compare --config configs/demo.yaml --seeds 1,2,3 --vary-all      # SFT and the reward model per seed
    from flows.compare import compare_methods
    result = compare_methods(load_config("configs/demo.yaml"), seeds=[1, 2, 3])   # the compare StageResult

Every seed is the pipeline with each method's own seed set (minirlhf.compare.seed_config): data, SFT and the reward
model are shared cached tasks unless `vary_all`; every method and the evaluation are cached tasks like any stage,
so a rerun with one more seed computes only that seed. The compare stage (minirlhf/compare.py) pools the seeds'
evaluations into intervals (v_compare, the report's comparison, the dashboard's comparison page).
"""

from __future__ import annotations

from minirlhf.compare import METHODS, seed_config
from minirlhf.config import PipelineConfig
from minirlhf.pipeline import enabled_stages, plan_compare
from minirlhf.stage import StageResult
from minirlhf.store import Store
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run

from flows.ray_runner import run_waves, run_waves_of, stage_runner
from tasks import run_stage_task

DEFAULT_SEEDS = [1, 2, 3]


@flow(name="compare-methods", flow_run_name="{config.name}-compare")
def compare_methods(config: PipelineConfig = PipelineConfig(), seeds: list[int] = DEFAULT_SEEDS,
                    vary_all: bool = False, equal_episodes: bool = True) -> StageResult:
    """Train every policy method from each seed, evaluate them together, and compare them with intervals."""
    if len(set(seeds)) < 2:
        raise ValueError(f"the comparison needs at least two different seeds, got {seeds}")
    store = Store.for_config(config)
    parameters = {"config": config.model_dump(mode="json"), "seeds": seeds, "vary_all": vary_all,
                  "equal_episodes": equal_episodes}
    cfgs = {seed: seed_config(config, seed, vary_all, equal_episodes) for seed in sorted(set(seeds))}
    with stage_runner(config, sorted({n for cfg in cfgs.values() for n in enabled_stages(cfg)})) as runner, \
            store.run(config.model_dump(mode="json"), prefect_flow_run_id=flow_run.id, deployment=deployment.name,
                      parameters=parameters) as run_id:
        results = {seed: {} for seed in cfgs}
        if runner is None:  # one seed after another, one stage after another
            for seed, cfg in cfgs.items():
                run_waves(None, cfg, list(enabled_stages(cfg)), run_id, results[seed])
        else:  # every seed's wave k at once
            run_waves_of(runner, [(cfg, list(enabled_stages(cfg)), results[seed]) for seed, cfg in cfgs.items()],
                         run_id)
        points = [{"seed": seed, "eval": results[seed]["eval"],
                   "seconds": {m: results[seed][m].seconds for m in METHODS if m in results[seed]}} for seed in cfgs]
        budget_cfg = seed_config(config, seeds[0], vary_all, equal_episodes)
        result = run_stage_task(plan_compare(budget_cfg, points), run_id)
    create_markdown_artifact(compare_markdown(result), key="compare-methods",
                             description="the policy methods over seeds, with 95% bootstrap intervals")
    return result


def compare_markdown(result: StageResult) -> str:
    m = result.metrics
    lines = [f"# Policy methods over {int(m.get('compare/n_seeds', 0))} seeds (95% bootstrap intervals)", "",
             "| policy | gold | gold gain over SFT | gold win rate vs SFT | KL |", "|---|---|---|---|---:|"]
    policies = sorted({k.split("/")[1] for k in m if k.count("/") == 2 and "_vs_" not in k.split("/")[1]},
                      key=lambda p: (p != "sft", p))

    def cell(policy: str, name: str) -> str:
        value = m.get(f"compare/{policy}/{name}")
        if value is None:
            return ""
        return f"{value:.3f} [{m[f'compare/{policy}/{name}_low']:.3f}, {m[f'compare/{policy}/{name}_high']:.3f}]"

    for p in policies:
        lines.append(f"| {p} | {cell(p, 'gold_reward')} | {cell(p, 'gold_gain')} | {cell(p, 'win_rate_gold')} "
                     f"| {cell(p, 'kl')} |")
    return "\n".join(lines)
