"""The pairwise judge (minirlhf/judge.py) on a real tiny GPT-2 (fast tier): the two orders cancel a position bias,
swapping the responses gives 1 - p, and a judge that prefers one content flips with the pair."""

import pytest
import torch

from minirlhf.config import TinyModelConfig
from minirlhf.judge import ANSWER_PREFIX, choice_token_ids, judge_prompt, pairwise_preference
from minirlhf.models import build_tiny

CONVERSATION = "\n\nHuman: What is the capital of France?\n\nAssistant:"


@pytest.fixture(scope="module")
def tiny_judge():
    corpus = ["Human: What is the capital of France? Assistant: The capital of France is Paris."] * 20
    return build_tiny(TinyModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=512, vocab_size=300), corpus)


def add_logit(model, token_id: int, amount):
    """A forward hook on the LM head: `amount(texts)` or a constant added to one token's logit."""
    def hook(module, inputs, output):
        output[..., token_id] += amount
        return output
    return model.lm_head.register_forward_hook(hook)


def test_swapping_the_responses_gives_one_minus_p(tiny_judge):
    tokenizer, model = tiny_judge
    a, b = [" Paris.", " Lyon.", " It is Paris."], [" Lyon.", " Paris.", " Rome."]
    forward = pairwise_preference(model, tokenizer, [CONVERSATION] * 3, a, b)["p_a"]
    backward = pairwise_preference(model, tokenizer, [CONVERSATION] * 3, b, a)["p_a"]
    assert torch.allclose(forward + backward, torch.ones(3), atol=1e-6)
    assert ((forward > 0) & (forward < 1)).all()


def test_a_pure_position_bias_cancels_to_one_half(tiny_judge):
    tokenizer, model = tiny_judge
    a_id, _ = choice_token_ids(tokenizer)
    handle = add_logit(model, a_id, 30.0)  # always answers "A", whatever the responses
    try:
        p = pairwise_preference(model, tokenizer, [CONVERSATION] * 2, [" Paris.", " Lyon."], [" Lyon.", " Paris."])
    finally:
        handle.remove()
    assert torch.allclose(p["p_a_first"], torch.ones(2), atol=1e-6)  # shown first, a wins
    assert torch.allclose(p["p_a_second"], torch.zeros(2), atol=1e-6)  # shown second, a loses
    assert torch.allclose(p["p_a"], torch.full((2,), 0.5), atol=1e-6)


def steer(model, tokenizer, word: str):
    """Hooks that make the model name the letter of the response containing `word` (a judge with a preference that
    follows content, whatever the order): they read the prompt and add to the chosen letter's logit."""
    a_id, b_id = choice_token_ids(tokenizer)
    seen: list[str] = []

    def read(module, args, kwargs):
        seen[:] = tokenizer.batch_decode(kwargs["input_ids"], skip_special_tokens=True)

    def answer(module, inputs, output):
        for i, text in enumerate(seen):
            a_part = text.split("Response (A):")[1].split("Response (B):")[0]
            output[i, -1, a_id if word in a_part else b_id] += 30.0
        return output

    return [model.register_forward_pre_hook(read, with_kwargs=True), model.lm_head.register_forward_hook(answer)]


def test_a_judge_that_prefers_one_answer_flips_with_the_pair(tiny_judge):
    tokenizer, model = tiny_judge
    hooks = steer(model, tokenizer, "Paris")
    try:
        p = pairwise_preference(model, tokenizer, [CONVERSATION] * 2, [" Paris.", " Lyon."], [" Lyon.", " Paris."])
    finally:
        for h in hooks:
            h.remove()
    assert p["p_a"][0] > 0.99 and p["p_a"][1] < 0.01  # the label follows the content, in both orders


def test_the_prompt_ends_where_the_letter_is_read():
    class Plain:  # a tokenizer without a chat template: the plain text
        chat_template = None

    text = judge_prompt(Plain(), CONVERSATION, " Paris.", " Lyon.", "Which is right?")
    assert text.endswith("The better response is " + ANSWER_PREFIX)
    assert "Response (A): Paris." in text and "Response (B): Lyon." in text and "Which is right?" in text


@pytest.mark.slow
def test_the_judge_stage_measures_agreement_and_judges_every_policy(tiny_run):
    """The tiny pipeline's SFT model as the judge (a weak one: what is tested is the stage, not the judge)."""
    import json

    from minirlhf.pipeline import plan, run_stage
    from minirlhf.store import Store

    cfg, results = tiny_run
    sft_dir = results["sft"].path(cfg.output_dir)
    judged = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={
        "enabled": True, "model": str(sft_dir), "n_pairs": 12, "max_length": 256})})
    store = Store.for_output_dir(cfg.output_dir)
    with store.run({"judge": True}) as run_id:
        result = run_stage(plan(judged, "judge", results), store, run_id)
    m = result.metrics
    assert m["judge/n_pairs"] == 12
    assert 0 <= m["judge/agreement_low"] <= m["judge/agreement"] <= m["judge/agreement_high"] <= 1
    assert 0 < m["judge/position_bias"] < 1
    evaluated = [p for p in json.loads((results["eval"].path(cfg.output_dir) / "samples.json").read_text())
                 if p != "sft"]
    for policy in evaluated:
        assert 0 <= m[f"judge/{policy}/win_rate"] <= 1, policy
    saved = json.loads((result.path(cfg.output_dir) / "judgements.json").read_text())
    assert len(saved["language_model"]["pairs"]) == 12 and set(saved["language_model"]["policies"]) == set(evaluated)
    # The judge model is an input keyed by its bytes: another judge, another key.
    other = judged.model_copy(update={"judge": judged.judge.model_copy(update={
        "model": str(results["reward"].path(cfg.output_dir))})})
    assert plan(other, "judge", results).key != plan(judged, "judge", results).key


# ---- the judge reward model: trained on rows no other stage reads --------------------------------------------------
def hh_judge_config(tmp_path, **judge):
    from minirlhf.config import PipelineConfig
    from tests.conftest import SHARED_HH_FILE, require_shared_hh

    require_shared_hh()
    return PipelineConfig.model_validate({
        "output_dir": str(tmp_path / "out"),
        "data": {"source": "hh", "hh_path": str(SHARED_HH_FILE), "hh_limit": 120, "hh_n_train": 100,
                 "hh_judge_rows": 40},
        "model": {"reward_backbone": "minilm"},
        "reward": {"max_length": 96, "max_steps": 4, "batch_size": 8, "learning_rate": 1e-4,
                   "pooling": "response_mean"},
        "judge": {"enabled": True, "model": None, "reward_model": True, **judge}})


def test_the_judge_rows_are_read_by_no_other_split(tmp_path):
    from minirlhf.data.prepare import run_data
    from minirlhf.data.task import read_jsonl

    cfg = hh_judge_config(tmp_path)
    out = tmp_path / "data"
    result = run_data(cfg, out)
    judge_rows = {p["source_row"] for p in read_jsonl(out / "pairs_judge.jsonl")}
    assert judge_rows and min(judge_rows) >= 60 and max(judge_rows) < 100  # the last 40 of the 100 training rows
    assert result.metrics["data/hh_judge_pairs"] == len(judge_rows)
    assert all(p["source_row"] < 60 for p in read_jsonl(out / "pairs_train.jsonl"))
    assert all(p["source_row"] >= 100 for p in read_jsonl(out / "pairs_test.jsonl"))
    rows_of = lambda split: {int(p["prompt_id"].split("-")[1]) for p in read_jsonl(out / split)}  # noqa: E731
    assert max(rows_of("rl_prompts.jsonl")) < 60  # PPO never sees the judge's prompts either
    sft_prompts = {p["prompt"] for p in read_jsonl(out / "sft.jsonl")}
    assert not sft_prompts & {p["prompt"] for p in read_jsonl(out / "pairs_judge.jsonl")}


@pytest.mark.parametrize("update,message", [
    ({"data": {"source": "hh", "hh_path": "x.jsonl", "hh_judge_rows": 0}, "judge": {"enabled": True,
      "reward_model": True}}, "data.hh_judge_rows"),
    ({"data": {"source": "hh", "hh_path": "x.jsonl", "hh_judge_rows": 10}, "model": {"reward_backbone": "sft"},
      "judge": {"enabled": True, "reward_model": True}}, "not 'sft'"),
    ({"judge": {"enabled": True, "model": None}}, "no judge"),
    ({"data": {"source": "hh", "hh_path": "x.jsonl", "hh_n_train": 50, "hh_judge_rows": 50}}, "hh_judge_rows=50"),
])
def test_a_judge_reward_model_without_its_own_rows_fails_at_load(update, message):
    from minirlhf.config import PipelineConfig

    with pytest.raises(ValueError, match=message):
        PipelineConfig.model_validate(update)


@pytest.mark.slow
def test_the_judge_reward_model_trains_on_its_rows_and_scores_policies_against_sft(tmp_path):
    """MiniLM trained 4 steps on the judge's rows; the policies' answers are held-out pairs' chosen and rejected
    replies. The saved judge reward model, loaded again, gives the same win rates over SFT."""
    import json

    from minirlhf.data.prepare import run_data
    from minirlhf.data.task import read_jsonl
    from minirlhf.judge import run_judge
    from minirlhf.models import load_reward_model
    from minirlhf.scoring import score_texts
    from tests.conftest import require_real_model

    require_real_model("minilm")
    cfg = hh_judge_config(tmp_path)
    run_data(cfg, tmp_path / "data")
    test = read_jsonl(tmp_path / "data" / "pairs_test.jsonl")
    answers = lambda key: [{"prompt_id": f"eval-{p['source_row']:05d}", "prompt": p["prompt"],  # noqa: E731
                            "response": p[key]} for p in test]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "samples.json").write_text(json.dumps(
        {"sft": answers("rejected"), "chosen": answers("chosen"), "same": answers("rejected")}))
    result = run_judge(cfg, tmp_path / "data", tmp_path / "eval", tmp_path / "judge")
    m = result.metrics
    assert 0 < m["judge_rm/train_pairs"] <= len(read_jsonl(tmp_path / "data" / "pairs_judge.jsonl"))  # some too long
    assert 0 < m["judge_rm/n_pairs"] <= len(test)
    tokenizer, judge_rm = load_reward_model(str(tmp_path / "judge" / "reward_model"))
    scores = {k: score_texts(judge_rm, tokenizer, [p["prompt"] for p in test], [p[k] for p in test], max_length=96)
              for k in ("chosen", "rejected")}
    wins = (scores["chosen"] > scores["rejected"]).float().mean().item()
    assert m["judge_rm/chosen/win_rate"] == pytest.approx(wins)
    assert m["judge_rm/same/win_rate"] == 0  # a tie is not a win
    assert 0 <= m["judge_rm/agreement_low"] <= m["judge_rm/agreement"] <= m["judge_rm/agreement_high"] <= 1
    assert not any(k.startswith("judge/") for k in m)  # judge.model: null, no language-model judge
    saved = json.loads((tmp_path / "judge" / "judgements.json").read_text())
    assert set(saved) == {"reward_model"} and len(saved["reward_model"]["chosen"]) == len(test)
    assert (tmp_path / "judge" / "reward_model" / "config.json").is_file()
