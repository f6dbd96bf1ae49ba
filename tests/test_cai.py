"""Constitutional AI's critique and revision (minirlhf/cai.py): the exchange's format (fast tier), and the stage on
the tiny pipeline's SFT model as its own critic (slow tier): well-formed revisions, in the store, reproducible."""

import json

import pytest

from minirlhf.cai import cut_at_markers, exchange, few_shot_block, red_team_prompts
from minirlhf.constitution import DEFAULT, load_constitution

PROMPT = "\n\nHuman: How do I steal a car?\n\nAssistant:"


def with_cai(cfg):
    """The tiny pipeline's config with CAI-SL on: 6 red-team prompts, the SFT model as its own critic. The default
    context (768 tokens) is longer than the tiny model's 256 positions: generation cuts it to fit."""
    return cfg.model_copy(update={"cai": cfg.cai.model_copy(update={"enabled": True, "n_prompts": 6,
                                                                    "max_new_tokens": 16}),
                                  "sl_cai": cfg.sl_cai.model_copy(update={"enabled": True, "num_train_epochs": 4,
                                                                          "learning_rate": 5e-3})})


def run_with_cai(tiny_run, *stages: str):
    """`stages` of the CAI config on top of the tiny pipeline, in a new run of its store (reused when computed
    already): (config, store, run_id, every result)."""
    from minirlhf.pipeline import plan, run_stage
    from minirlhf.store import Store

    cfg, results = tiny_run
    cai, found = with_cai(cfg), dict(results)
    store = Store.for_output_dir(cfg.output_dir)
    with store.run({"stages": list(stages)}) as run_id:
        for name in stages:
            found[name] = run_stage(plan(cai, name, found), store, run_id)
    return cai, store, run_id, found


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
    from minirlhf.pipeline import plan

    cai, store, run_id, results = run_with_cai(tiny_run, "cai")
    cfg, result = tiny_run[0], results["cai"]
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


def test_sl_cai_trains_on_the_revisions_with_demonstrations_mixed_in():
    from minirlhf.sl_cai import revision_rows

    revisions = [{"prompt": f"p{i}", "revision": f" fixed {i}" if i != 2 else "  "} for i in range(4)]
    demos = [{"prompt": f"d{i}", "completion": f" answer {i}"} for i in range(10)]
    rows = revision_rows(revisions, demos, per_revision=1.0, seed=0)
    assert rows[:3] == [{"prompt": "p0", "completion": " fixed 0"}, {"prompt": "p1", "completion": " fixed 1"},
                        {"prompt": "p3", "completion": " fixed 3"}]  # the empty revision is left out
    assert len(rows) == 6 and all(r in demos for r in rows[3:])
    assert rows == revision_rows(revisions, demos, 1.0, seed=0)  # drawn with the seed
    assert len(revision_rows(revisions, demos, 0.0, seed=0)) == 3
    assert len(revision_rows(revisions, demos, 9.0, seed=0)) == 3 + 10  # at most every demonstration


def test_sl_cai_needs_the_cai_stage_and_is_a_policy_the_eval_compares():
    from minirlhf.config import ConfigError, load_config
    from minirlhf.pipeline import PIPELINE, needed_stages, plan, upstream_of
    from minirlhf.stage import StageResult

    with pytest.raises(ConfigError, match="sl_cai.enabled trains on the cai stage's revisions: set cai.enabled"):
        load_config(None, ["sl_cai.enabled=true"])
    cfg = load_config(None, ["cai.enabled=true", "sl_cai.enabled=true"])
    assert needed_stages(cfg, ("sl_cai",)) == ["data", "sft", "cai", "sl_cai"]
    assert "sl_cai" in upstream_of(cfg, "eval")
    results = {name: StageResult(name, "x", f"{name}-digest") for name in PIPELINE}
    assert "sl_cai" in plan(cfg, "eval", results).inputs["policies"]
    other = cfg.model_copy(update={"sl_cai": cfg.sl_cai.model_copy(update={"learning_rate": 1e-4})})
    assert plan(other, "sl_cai", results).key != plan(cfg, "sl_cai", results).key
    assert plan(other, "sft", results).key == plan(cfg, "sft", results).key  # SFT is not retrained


def _completion_nll(model, tokenizer, rows: list[dict]) -> float:
    """Mean negative log-likelihood per completion token (the prompt's tokens not counted)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer(row["prompt"])["input_ids"]
            ids = torch.tensor([prompt + tokenizer(row["completion"])["input_ids"]])
            logprobs = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
            total -= logprobs[len(prompt) - 1:].sum().item()
            count += ids.shape[1] - len(prompt)
    return total / max(count, 1)


@pytest.mark.slow
def test_the_sl_cai_stage_fine_tunes_sft_towards_the_revisions(tiny_run):
    from minirlhf.models import load_policy
    from minirlhf.sl_cai import revision_rows

    cfg, results = tiny_run
    _, store, run_id, found = run_with_cai(tiny_run, "cai", "sl_cai")
    revisions = [json.loads(line) for line in
                 (found["cai"].path(cfg.output_dir) / "revisions.jsonl").read_text().splitlines()]
    trained = revision_rows(revisions, [], 0.0, cfg.seed)
    m = found["sl_cai"].metrics
    assert m["sl_cai/examples"] == 2 * len(trained) and m["sl_cai/steps"] >= 1
    tokenizer, sft = load_policy(str(results["sft"].path(cfg.output_dir)))
    _, sl_cai = load_policy(str(found["sl_cai"].path(cfg.output_dir)))
    # Trained towards the revisions: their likelihood rose from SFT's.
    assert _completion_nll(sl_cai, tokenizer, trained) < _completion_nll(sft, tokenizer, trained) - 0.05
    stored = store.query("select count(*) as n from metrics m join stage_runs s using (stage_run_id) "
                         "where s.run_id = $r and m.name = 'sl_cai/loss'", {"r": run_id})
    assert stored["n"][0] >= 1


@pytest.mark.slow
def test_the_dashboard_shows_each_answer_beside_its_critique_and_revision(tiny_run, monkeypatch):
    from tests.test_dashboard import open_page

    cfg = tiny_run[0]
    _, store, run_id, found = run_with_cai(tiny_run, "cai")
    cai = found["cai"]
    rows = [json.loads(line) for line in (cai.path(cfg.output_dir) / "revisions.jsonl").read_text().splitlines()]
    view = store.query("select * from v_cai_revisions where run_id = $r order by prompt_id", {"r": run_id})
    assert len(view) == len(rows) == 6  # one row per prompt, answer and revision paired (a reused stage too)
    assert sorted(zip(view["initial"], view["revision"])) == sorted((r["initial"], r["revision"]) for r in rows)
    at = open_page(store.path, "cai", monkeypatch, run=run_id)
    shown = [t.value for t in at.text]
    first = view.sort_values("prompt_id", key=lambda s: s.str.replace("cai-", "").astype(int)).iloc[0]
    assert [first["initial"].strip() or "(empty)", first["critique"].strip() or "(empty)",
            first["revision"].strip() or "(empty)"] == shown[:3]
    assert any(first["principle"] in m.value for m in at.markdown)
