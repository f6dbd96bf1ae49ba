"""AI feedback (minirlhf/rlaif.py): a label flip in the feedback model flips the pair (fast tier, a real tiny GPT-2
whose choice is steered by a hook), and the stage on the tiny pipeline writes pairs the reward stage can read."""

import json

import pytest

from minirlhf.constitution import DEFAULT, load_constitution
from minirlhf.rlaif import ai_label, gold_agreement
from tests.test_judge import steer, tiny_judge  # noqa: F401  (tiny_judge: the module fixture)

PROMPT = "\n\nHuman: What is the capital of France?\n\nAssistant:"
PAIRS = [{"prompt": PROMPT, "chosen": " The capital of France is Paris.", "rejected": " The capital is Lyon."},
         {"prompt": PROMPT, "chosen": " The capital is Lyon.", "rejected": " The capital of France is Paris."}]


@pytest.mark.parametrize("word, keeps", [("Paris", [True, False]), ("Lyon", [False, True])])
def test_a_label_flip_in_the_feedback_model_flips_the_pair(tiny_judge, word, keeps):  # noqa: F811
    tokenizer, model = tiny_judge
    hooks = steer(model, tokenizer, word)
    try:
        rows = ai_label(model, tokenizer, PAIRS, load_constitution(DEFAULT), seed=0, max_length=512)
    finally:
        for h in hooks:
            h.remove()
    assert [r["human_agrees"] for r in rows] == keeps
    assert all(word in r["chosen"] for r in rows)  # whatever the human order, the steered choice is chosen
    assert {r["principle"] for r in rows} <= {p.name for p in load_constitution(DEFAULT).principles}


def test_gold_agreement_counts_pairs_gold_can_tell_apart():
    assert gold_agreement(PAIRS) == [1.0, 0.0]  # Paris is right; Lyon is not
    same = [{"prompt": PROMPT, "chosen": " Paris.", "rejected": " Paris."}]
    assert gold_agreement(same) == []


@pytest.mark.slow
def test_the_rlaif_stage_relabels_training_pairs(tiny_run):
    from minirlhf.pipeline import plan, run_stage
    from minirlhf.store import Store

    cfg, results = tiny_run
    rlaif = cfg.model_copy(update={"rlaif": cfg.rlaif.model_copy(update={
        "enabled": True, "n_pairs": 16, "max_length": 256})})
    store = Store.for_output_dir(cfg.output_dir)
    with store.run({"rlaif": True}) as run_id:
        result = run_stage(plan(rlaif, "rlaif", results), store, run_id)
    rows = [json.loads(x) for x in (result.path(cfg.output_dir) / "pairs_train.jsonl").read_text().splitlines()]
    human = [json.loads(x) for x in
             (results["data"].path(cfg.output_dir) / "pairs_train.jsonl").read_text().splitlines()][:16]
    assert len(rows) == 16
    for row, pair in zip(rows, human):
        assert {row["chosen"], row["rejected"]} == {pair["chosen"], pair["rejected"]}  # the same two responses
        assert row["human_agrees"] == (row["chosen"] == pair["chosen"]) and 0 <= row["p_first"] <= 1
    m = result.metrics
    assert m["rlaif/n_pairs"] == 16 and 0 <= m["rlaif/human_agreement"] <= 1
    assert "rlaif/gold_agreement_ai" in m and "rlaif/gold_agreement_human" in m


def test_ai_labels_need_the_rlaif_stage():
    from minirlhf.config import ConfigError, load_config
    from minirlhf.pipeline import upstream_of

    with pytest.raises(ConfigError, match="reward.labels=ai .* rlaif.enabled=true"):
        load_config(None, ["reward.labels=ai"])
    cfg = load_config(None, ["reward.labels=ai", "rlaif.enabled=true"])
    assert upstream_of(cfg, "reward") == ("data", "sft", "rlaif")
    assert upstream_of(load_config(None), "reward") == ("data", "sft")
    # Feedback from another model does not wait for (nor retrain with) the SFT model
    assert upstream_of(cfg, "rlaif") == ("data", "sft")
    assert upstream_of(load_config(None, ["rlaif.enabled=true", "rlaif.feedback=smollm2"]), "rlaif") == ("data",)


@pytest.mark.slow
def test_the_reward_model_trains_on_the_ai_labels(tiny_run):
    from minirlhf.pipeline import plan, run_stage
    from minirlhf.store import Store

    cfg, results = tiny_run
    ai = cfg.model_copy(update={"rlaif": cfg.rlaif.model_copy(update={"enabled": True, "n_pairs": 16,
                                                                       "max_length": 256}),
                                "reward": cfg.reward.model_copy(update={"labels": "ai"})})
    store = Store.for_output_dir(cfg.output_dir)
    with store.run({"rlaif": True}) as run_id:
        results = {**results, "rlaif": run_stage(plan(ai, "rlaif", results), store, run_id)}
        reward = run_stage(plan(ai, "reward", results), store, run_id)
    assert reward.metrics["reward/train_pairs"] == 16  # the relabelled pairs, not the data's 300
    assert reward.key != results["reward"].key and "reward/accuracy" in reward.metrics  # held-out human labels
