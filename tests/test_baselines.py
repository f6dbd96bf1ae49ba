"""The DPO, RLOO and GRPO baselines: each moves the tiny SFT policy the way its objective says (slow tier), the eval
stage compares every enabled policy, and a disabled baseline is neither run nor evaluated (wiring: fast tier)."""


import pytest
import torch

from minirlhf.config import load_config
from minirlhf.data.task import read_jsonl
from minirlhf.evaluate import sample
from minirlhf.models import load_policy, load_reward_model
from minirlhf.pipeline import PIPELINE, enabled_stages, needed_stages, plan, run_pipeline, upstream_of
from minirlhf.scoring import score_texts
from minirlhf.stage import StageResult
from minirlhf.store import Store

POLICIES = ("sft", "ppo", "dpo", "rloo", "grpo")
GROUP_METHODS = ("rloo", "grpo")  # TRL's group-sampling trainers, rewarded alike (minirlhf.rloo.reward_function)


# ---- wiring (fast): which stages run, and what the eval stage's key holds ---------------------------------------
def _fake_results(cfg) -> dict[str, StageResult]:
    return {name: StageResult(name, "x", f"{name}-digest") for name in PIPELINE}


def test_a_disabled_baseline_is_not_run_nor_upstream_of_eval():
    on = load_config(None)
    off = load_config(None, ["rloo.enabled=false"])
    assert PIPELINE == ("data", "sft", "cai", "sl_cai", "rlaif", "reward", "ensemble", "interpret", "ppo", "dpo",
                        "rloo", "grpo", "eval", "judge")
    # the ensemble, the probes and GRPO: off
    assert enabled_stages(on) == ("data", "sft", "reward", "ppo", "dpo", "rloo", "eval")
    assert enabled_stages(off) == ("data", "sft", "reward", "ppo", "dpo", "eval")
    assert upstream_of(on, "eval") == ("data", "sft", "reward", "ppo", "dpo", "rloo")
    assert upstream_of(off, "eval") == ("data", "sft", "reward", "ppo", "dpo")
    assert needed_stages(on, ("eval",)) == list(enabled_stages(on))
    ensemble = load_config(None, ["ensemble.enabled=true"])
    assert needed_stages(ensemble, ("ppo",)) == ["data", "sft", "reward", "ensemble", "ppo"]
    assert needed_stages(off, ("eval",)) == ["data", "sft", "reward", "ppo", "dpo", "eval"]
    assert needed_stages(on, ("dpo",)) == ["data", "sft", "dpo"]
    with pytest.raises(ValueError, match=r"disabled.*--set rloo.enabled=true"):
        needed_stages(off, ("rloo",))


def test_eval_key_changes_with_the_set_of_policies():
    on = load_config(None)
    off = load_config(None, ["dpo.enabled=false"])
    results = _fake_results(on)
    assert plan(on, "eval", results).key != plan(off, "eval", results).key
    assert plan(on, "ppo", results).key == plan(off, "ppo", results).key  # nothing else moves


# ---- tiny stage runs (slow) ---------------------------------------------------------------------------------------
@torch.no_grad()
def response_logprobs(model, tokenizer, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """(n,) log pi(response + EOS | prompt): the sequences DPO scores (TRL appends EOS to chosen and rejected)."""
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    response_ids = [tokenizer(r + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for r in responses]
    width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id)  # (n, width), right-padded
    response_mask = torch.zeros(len(prompts), width)  # (n, width): 1 on response tokens
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        response_mask[i, len(p) : len(p) + len(r)] = 1
    logits = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()).logits  # (n, width, vocab)
    token_logprobs = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]  # (n, width - 1): token t + 1
    return (token_logprobs * response_mask[:, 1:]).sum(1)


def preference_logratio(model, tokenizer, pairs: list[dict]) -> torch.Tensor:
    """(n_pairs,) log pi(chosen) - log pi(rejected)."""
    prompts = [p["prompt"] for p in pairs]
    return (response_logprobs(model, tokenizer, prompts, [p["chosen"] for p in pairs])
            - response_logprobs(model, tokenizer, prompts, [p["rejected"] for p in pairs]))


@pytest.mark.slow
def test_dpo_moves_the_policy_toward_the_chosen_responses(tiny_run):
    cfg, results = tiny_run
    pairs = read_jsonl(results["data"].path(cfg.output_dir) / "pairs_train.jsonl")[:64]
    tokenizer, sft = load_policy(str(results["sft"].path(cfg.output_dir)))
    _, dpo = load_policy(str(results["dpo"].path(cfg.output_dir)))  # a plain checkpoint, as the eval stage loads it
    # DPO's implicit reward margin, beta * [(log pi - log pi_sft)(chosen) - (log pi - log pi_sft)(rejected)]
    margins = cfg.dpo.beta * (preference_logratio(dpo, tokenizer, pairs) - preference_logratio(sft, tokenizer, pairs))
    assert margins.mean() > 0
    assert (margins > 0).float().mean() > 0.5  # the implicit reward prefers the chosen response on most pairs
    assert results["dpo"].metrics["dpo/steps"] == cfg.dpo.max_steps
    assert results["dpo"].metrics["dpo/rewards/accuracies"] > 0.5


def penalised_scores(policy, tokenizer, rm, rm_tokenizer, prompts: list[str], cfg, method: str) -> torch.Tensor:
    """(n,) what RLOO and GRPO maximise before their KL term: the reward-model score of a fresh sample of at most
    `<method>.max_new_tokens` tokens, plus `<method>.missing_eos_penalty` where the sample has no EOS."""
    section = getattr(cfg, method)
    sampling = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"max_new_tokens": section.max_new_tokens,
                                                                          "temperature": section.temperature})})
    batches = sample(policy, tokenizer, prompts, sampling, seed=7)
    texts = [t for batch in batches for t in batch[0]]
    has_eos = torch.cat([batch[3] for batch in batches])
    return score_texts(rm, rm_tokenizer, prompts, texts) + section.missing_eos_penalty * (~has_eos).float()


@pytest.mark.slow
@pytest.mark.parametrize("method", GROUP_METHODS)
def test_group_baselines_raise_the_reward_they_are_trained_on(tiny_run, method):
    cfg, results = tiny_run
    # 256 samples
    prompts = [r["prompt"] for r in read_jsonl(results["data"].path(cfg.output_dir) / "rl_prompts.jsonl")] * 4
    rm_tokenizer, rm = load_reward_model(str(results["reward"].path(cfg.output_dir)))
    tokenizer, sft = load_policy(str(results["sft"].path(cfg.output_dir)))
    _, trained = load_policy(str(results[method].path(cfg.output_dir)))
    before = penalised_scores(sft, tokenizer, rm, rm_tokenizer, prompts, cfg, method).mean()
    after = penalised_scores(trained, tokenizer, rm, rm_tokenizer, prompts, cfg, method).mean()
    assert after > before + 0.1, (float(before), float(after))


@pytest.mark.slow
@pytest.mark.parametrize("method", GROUP_METHODS)
def test_group_baselines_log_every_step_with_their_eos_check_agreeing_with_trl(tiny_run, method):
    cfg, results = tiny_run
    steps_asked = getattr(cfg, method).steps
    history = {row["step"]: row for row in results[method].history if f"{method}/reward" in row}
    assert sorted(history) == list(range(1, steps_asked + 1))
    for row in history.values():
        for name in ("reward", "proxy_reward", "gold_reward", "kl", "eos_rate"):
            assert f"{method}/{name}" in row, name
        # Our reward function's EOS test (missing-EOS penalty) and TRL's truncation count see the same samples.
        assert row[f"{method}/eos_rate"] == pytest.approx(1 - row[f"{method}/completions/clipped_ratio"])
    store = Store.for_output_dir(cfg.output_dir)
    steps = store.query(f"select distinct step from metrics where name = '{method}/gold_reward' "
                        "order by step")["step"].tolist()
    assert steps == list(range(1, steps_asked + 1))
    assert len(store.query(f"select * from samples where policy = '{method}' and step > 0")) > 0


@pytest.mark.slow
def test_eval_compares_every_policy(tiny_run):
    cfg, results = tiny_run
    assert list(results) == list(enabled_stages(cfg))
    metrics = results["eval"].metrics
    for policy in POLICIES:
        assert f"eval/{policy}/gold_reward" in metrics and f"eval/{policy}/proxy_reward" in metrics, policy
    for policy in POLICIES[1:]:
        assert f"eval/{policy}/win_rate_gold" in metrics and f"eval/{policy}/kl" in metrics, policy
    store = Store.for_output_dir(cfg.output_dir)
    evaluated = store.query("select distinct policy from samples where step = 0 order by policy")["policy"].tolist()
    assert evaluated == sorted(POLICIES)


@pytest.mark.slow
def test_a_disabled_baseline_is_absent_from_the_run_and_the_eval(tiny_run):
    cfg, results = tiny_run
    off = cfg.model_copy(update={"rloo": cfg.rloo.model_copy(update={"enabled": False})})
    again = run_pipeline(off)  # same output root: the other stages are reused, the eval is a new one
    assert list(again) == ["data", "sft", "reward", "interpret", "ppo", "dpo", "grpo", "eval"]
    assert all(again[s].cache_hit for s in ("data", "sft", "reward", "interpret", "ppo", "dpo", "grpo"))
    assert not again["eval"].cache_hit and again["eval"].output_dir != results["eval"].output_dir
    assert not [name for name in again["eval"].metrics if "/rloo/" in name]
    assert "eval/dpo/gold_reward" in again["eval"].metrics
    store = Store.for_output_dir(cfg.output_dir)
    run_id = store.query("select run_id from runs order by started_at desc limit 1")["run_id"][0]
    stages = store.query("select stage from stage_runs where run_id = ? order by started_at",
                         [run_id])["stage"].tolist()
    assert stages == ["data", "sft", "reward", "interpret", "ppo", "dpo", "grpo", "eval"]
