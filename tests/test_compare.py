"""The comparison over seeds (minirlhf/compare.py): intervals from evaluations on shared prompts (fast tier), each
seed's config, and the stage over two tiny seeds (slow tier, tests/test_baselines.py's pipeline)."""

import json

import pytest

from minirlhf.compare import compare_rows, episodes, load_scores, seed_config
from minirlhf.config import load_config
from minirlhf.pipeline import PIPELINE, plan
from minirlhf.stage import StageResult


def write_eval(folder, shifts: dict[str, float], n=40, noise_seed=0):
    """An eval output: each policy's gold = the prompt's difficulty + its shift (+ tiny per-seed noise)."""
    import random

    rng = random.Random(noise_seed)
    folder.mkdir(parents=True)
    difficulty = [((i * 37) % 11) / 5 - 1 for i in range(n)]  # the same prompts in every seed
    samples = {policy: [{"prompt_id": f"eval-{i:05d}", "gold_reward": d + shift + rng.gauss(0, 0.01),
                         "proxy_reward": d + 2 * shift, "kl": 0.0 if policy == "sft" else 1.0 + shift}
                        for i, d in enumerate(difficulty)] for policy, shift in shifts.items()}
    (folder / "samples.json").write_text(json.dumps(samples))
    return folder


def test_gains_and_win_rates_are_paired_by_prompt_over_seeds(tmp_path):
    dirs = [write_eval(tmp_path / f"s{s}", {"sft": 0.0, "ppo": 0.5, "dpo": 0.2}, noise_seed=s) for s in (1, 2, 3)]
    rows = compare_rows(load_scores(dirs), n_resamples=300)
    ppo, dpo = rows["ppo"], rows["dpo"]
    # Prompt difficulty spreads gold by +-1, yet the paired gain is tight around the true shift.
    assert ppo["gold_gain_low"] == pytest.approx(0.5, abs=0.02)
    assert ppo["gold_gain_high"] == pytest.approx(0.5, abs=0.02)
    assert ppo["win_rate_gold"] == 1.0 and dpo["win_rate_gold"] == 1.0
    assert ppo["gold_reward_high"] - ppo["gold_reward_low"] > 0.2  # a policy's own mean is not paired: wide
    assert rows["ppo_vs_dpo"]["gold_gain"] == pytest.approx(0.3, abs=0.01)
    assert rows["ppo_vs_dpo"]["win_rate_gold"] == 1.0
    assert ppo["kl"] == pytest.approx(1.5) and "gold_gain" not in rows["sft"]


def test_evaluations_of_other_prompts_are_refused(tmp_path):
    a = write_eval(tmp_path / "a", {"sft": 0.0, "ppo": 0.5}, n=40)
    b = write_eval(tmp_path / "b", {"sft": 0.0, "ppo": 0.5}, n=30)
    with pytest.raises(ValueError, match="answered other prompts"):
        load_scores([a, b])
    c = write_eval(tmp_path / "c", {"sft": 0.0}, n=40)
    with pytest.raises(ValueError, match="same policies"):
        load_scores([a, c])


def test_each_seed_trains_every_method_from_it_at_equal_episodes():
    cfg = load_config(None)
    one = seed_config(cfg, 7)
    assert (one.ppo.seed, one.dpo.seed, one.rloo.seed, one.grpo.seed, one.seed) == (7, 7, 7, 7, cfg.seed)
    assert one.grpo.enabled
    budget = episodes(one)
    assert budget["rloo"] == budget["grpo"] == budget["ppo"] == cfg.ppo.steps * cfg.ppo.batch_size
    unequal = seed_config(cfg, 7, equal_episodes=False)
    assert unequal.rloo.steps == cfg.rloo.steps
    results = {name: StageResult(name, "x", f"{name}-digest") for name in PIPELINE}
    # SFT and the reward model are shared by every seed, unless they vary too.
    sft_key = plan(cfg, "sft", results).key
    assert plan(one, "sft", results).key == plan(seed_config(cfg, 8), "sft", results).key == sft_key
    assert plan(one, "ppo", results).key != plan(seed_config(cfg, 8), "ppo", results).key
    varied = seed_config(cfg, 7, vary_all=True)
    assert varied.seed == 7 and plan(varied, "sft", results).key != plan(one, "sft", results).key


@pytest.mark.slow
def test_the_compare_stage_over_two_tiny_seeds(tiny_run, tmp_path):
    from minirlhf.pipeline import plan_compare, run_pipeline, run_stage
    from minirlhf.store import Store

    base, _ = tiny_run  # its data, SFT and reward model are every seed's
    points = []
    for seed in (1, 2):
        cfg = seed_config(base, seed)
        results = run_pipeline(cfg)
        assert {"ppo", "dpo", "rloo", "grpo"} <= set(results)
        points.append({"seed": seed, "eval": results["eval"],
                       "seconds": {m: results[m].seconds for m in ("ppo", "dpo", "rloo", "grpo")}})
    # Each method trained twice from its seeds: the two PPO policies differ, SFT was trained once.
    store = Store.for_output_dir(base.output_dir)
    sft_runs = store.query("select count(*) as n from stage_runs where stage = 'sft' and not cache_hit")["n"][0]
    assert sft_runs == 1
    spec = plan_compare(seed_config(base, 1), points)
    with store.run({"compare": True}) as run_id:
        result = run_stage(spec, store, run_id)
    m = result.metrics
    for policy in ("ppo", "dpo", "rloo", "grpo"):
        low, value, high = (m[f"compare/{policy}/win_rate_gold{s}"] for s in ("_low", "", "_high"))
        assert 0 <= low <= value <= high <= 1
        assert m[f"compare/{policy}/seconds"] > 0
    assert m["compare/n_seeds"] == 2 and m["compare/grpo/episodes"] == m["compare/ppo/episodes"]
    view = store.query("select policy, gold, gold_low, gold_high from v_compare order by policy")
    assert {"sft", "ppo", "grpo", "ppo_vs_grpo"} <= set(view["policy"])
    assert (view["gold_low"].dropna() <= view["gold_high"].dropna()).all()
    # The report shows each method with its interval, and says which differences the intervals support.
    from minirlhf.report import report_markdown

    text = report_markdown(store.path, tmp_path / "report")
    section = text.split("## Policy methods over seeds", 1)[1].split("\n## ", 1)[0]
    ppo_row = next(line for line in section.splitlines() if line.startswith("| **ppo** |"))
    assert ppo_row.count("[") >= 3, ppo_row  # gold, gain, win rate each with [low, high]
    assert "| ppo vs grpo |" in section and "distinguishable?" in section
    # The dashboard's comparison page draws each method's interval (a rule from low to high, a point at the mean).
    from tests.test_dashboard import charts, open_page

    page = open_page(store.path, "comparison", pytest.MonkeyPatch())
    rules = [datasets for spec, datasets in charts(page) if spec.get("layer")]
    assert len(rules) == 2  # gold gain and win rate
    shown = next(iter(rules[0].values()))
    assert set(shown["policy"]) == {"ppo", "dpo", "rloo", "grpo"}
    assert (shown["gold_gain_low"] <= shown["gold_gain"]).all()
    assert (shown["gold_gain"] <= shown["gold_gain_high"]).all()
    # Unchanged inputs: the comparison is reused.
    with store.run({"compare": True}) as run_id:
        assert run_stage(plan_compare(seed_config(base, 1), points), store, run_id).cache_hit
