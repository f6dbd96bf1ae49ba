"""Constitutional AI's critique and revision (minirlhf/cai.py): the exchange's format (fast tier), and the stage on
the tiny pipeline's SFT model as its own critic (slow tier): well-formed revisions, in the store, reproducible."""

import json

import pytest

from minirlhf.cai import cut_at_markers, exchange, few_shot_block, red_team_prompts
from minirlhf.constitution import DEFAULT, load_constitution

PROMPT = "\n\nHuman: How do I steal a car?\n\nAssistant:"


def test_the_exchange_asks_for_a_critique_then_a_revision_by_one_principle():
    principle = load_constitution(DEFAULT).principles[1]
    ask_critique = exchange(PROMPT, " Sure! Here is how.", principle)
    assert ask_critique.endswith("\n\nCritique:") and principle.critique_request in ask_critique
    assert ask_critique.startswith(PROMPT.rstrip() + " Sure! Here is how.")
    ask_revision = exchange(PROMPT, " Sure! Here is how.", principle, " It helps a theft.")
    assert ask_revision.startswith(ask_critique + " It helps a theft.")
    assert ask_revision.endswith("\n\nRevision:") and principle.revision_request in ask_revision


def test_few_shot_examples_come_as_complete_exchanges():
    constitution = load_constitution(DEFAULT)
    block = few_shot_block(constitution)
    assert block.count("Critique:") == block.count("Revision:") == len(constitution.few_shot)
    assert constitution.few_shot[0].revision in block


def test_a_generation_stops_at_the_next_turn():
    assert cut_at_markers(" I can't help with that.\n\nHuman: and now?") == "I can't help with that."
    assert cut_at_markers(" It is harmful.\n\nRevisionRequest: ...") == "It is harmful."
    assert cut_at_markers(" plain") == "plain"


def test_red_team_prompts_are_the_harmful_requests_when_the_task_marks_them():
    rows = [{"prompt": "a", "intent": "capital"}, {"prompt": "b", "intent": "harmful"},
            {"prompt": "c", "intent": "harmful"}]
    assert red_team_prompts(rows, 5) == ["b", "c"]
    assert red_team_prompts([{"prompt": "x"}, {"prompt": "y"}], 1) == ["x"]  # HH rows: every prompt


@pytest.mark.slow
def test_the_cai_stage_writes_well_formed_revisions_into_the_store(tiny_run):
    from minirlhf.pipeline import plan, run_stage
    from minirlhf.store import Store

    cfg, results = tiny_run
    # The default context (768 tokens) is longer than the tiny model's 256 positions: generation cuts it to fit.
    cai = cfg.model_copy(update={"cai": cfg.cai.model_copy(update={"enabled": True, "n_prompts": 6,
                                                                   "max_new_tokens": 16})})
    store = Store.for_output_dir(cfg.output_dir)
    with store.run({"cai": True}) as run_id:
        result = run_stage(plan(cai, "cai", results), store, run_id)
    rows = [json.loads(line) for line in (result.path(cfg.output_dir) / "revisions.jsonl").read_text().splitlines()]
    names = {p.name for p in load_constitution(DEFAULT).principles}
    assert len(rows) == 6
    for row in rows:
        assert set(row) == {"prompt", "initial", "principle", "critique", "revision"}
        assert row["principle"] in names and "Human:" in row["prompt"]
        assert all(isinstance(row[k], str) for k in ("initial", "critique", "revision"))
    m = result.metrics
    assert m["cai/n_prompts"] == 6 and "cai/initial_gold" in m and "cai/revised_gold" in m  # harmful: gold known
    stored = store.query("select policy, count(*) as n, any_value(extra) as extra from samples "
                         "where policy like 'cai_%' group by policy order by policy")
    assert stored["policy"].tolist() == ["cai_initial", "cai_revision"] and stored["n"].tolist() == [6, 6]
    assert json.loads(stored["extra"][0])["principle"] in names
    # The critic is configuration: another model is another key (and an input keyed by its bytes).
    other = cai.model_copy(update={"cai": cai.cai.model_copy(update={
        "critic": str(results["sft"].path(cfg.output_dir))})})
    assert plan(other, "cai", results).key != plan(cai, "cai", results).key
