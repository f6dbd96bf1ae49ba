"""What the reward model computes (minirlhf/interpret.py): probes and the words table against naive references and
planted features (fast tier), the stage on the tiny pipeline's reward model and on HH with MiniLM (slow tier)."""

import json

import pytest
import torch

from minirlhf.interpret import fit_ridge, leave_one_out, probe_layers, r_squared, response_features, word_effects


def test_ridge_matches_least_squares_without_penalty():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 3.0
    w = fit_ridge(x, y, l2=0.0)
    reference = torch.linalg.lstsq(torch.cat([x, torch.ones(50, 1)], 1).double(), y.double()[:, None]).solution[:, 0]
    assert torch.allclose(w.double(), reference, atol=1e-4)
    assert r_squared(torch.cat([x, torch.ones(50, 1)], 1) @ w, y) == pytest.approx(1.0, abs=1e-6)


def test_probes_find_the_layer_where_a_feature_is_planted():
    """Three 'layers' of noise; the feature is linearly readable from layer 2 on, the length from layer 1 on."""
    g = torch.Generator().manual_seed(1)
    n, width = 400, 8
    flag = (torch.rand(n, generator=g) < 0.5).float()
    length = torch.randint(1, 20, (n,), generator=g).float()
    states = torch.randn(4, n, width, generator=g)
    states[1, :, 0] += length  # length from layer 1
    states[2:, :, 1] += 4 * (2 * flag - 1)  # the flag from layer 2
    states[2:, :, 0] += length
    scores = 2 * flag + 0.01 * torch.randn(n, generator=g)  # the "reward model" scores the flag
    train = torch.arange(n) % 2 == 0
    table = probe_layers(states, {"hedge": flag, "length": length}, train, scores)
    hedge, size = table["hedge"], table["length"]
    assert hedge["layers"][0] < 0.65 and hedge["layers"][1] < 0.65 and hedge["layers"][2] > 0.95
    assert hedge["decodable_at"] == 2 and 0.4 < hedge["baseline"] < 0.6
    assert size["layers"][0] < 0.2 and size["layers"][1] > 0.9 and size["decodable_at"] in (1, 2)
    assert hedge["score_r2"] > 0.9 and size["score_r2"] < 0.1  # the score follows the flag, not the length


def test_response_features_of_the_embedded_task():
    prompt = "\n\nHuman: What is the capital of France?\n\nAssistant:"
    assert response_features(prompt, " The capital of France is Paris.") == {
        "correct": 1.0, "hedge": 0.0, "filler": 0.0, "refusal": 0.0, "length": 6.0}
    hedged = response_features(prompt, " I think the capital of France is Lyon. I hope this helps!")
    assert (hedged["correct"], hedged["hedge"], hedged["filler"]) == (0.0, 1.0, 1.0)
    assert response_features(prompt, " I'm sorry, but I can't help with that.")["refusal"] == 1.0


def test_word_effects_average_each_word_over_its_occurrences():
    g = torch.Generator().manual_seed(2)
    vocabulary = [" Sure", " sure", "sure ", " no", " No", " the", " sorry", " ", "!"]
    attributions = [[(vocabulary[int(i)], float(e)) for i, e in zip(torch.randint(0, 9, (n,), generator=g),
                                                                   torch.randn(n, generator=g))]
                    for n in (3, 7, 12, 5)]
    table = word_effects(attributions, min_count=2)
    naive: dict[str, list[float]] = {}  # a naive loop: lower-case, strip, drop the empty token
    for response in attributions:
        for token, effect in response:
            if token.strip():
                naive.setdefault(token.strip().lower(), []).append(effect)
    want = {w: (sum(v) / len(v), len(v)) for w, v in naive.items() if len(v) >= 2}
    assert {row["word"]: (pytest.approx(row["mean_effect"]), row["count"]) for row in table} == want
    assert [row["mean_effect"] for row in table] == sorted((row["mean_effect"] for row in table), reverse=True)
    assert "" not in {row["word"] for row in table}
    assert word_effects(attributions, min_count=10_000) == []


@pytest.mark.slow
def test_leave_one_out_is_the_score_drop_of_removing_each_token(tiny_run):
    from minirlhf.models import load_reward_model
    from minirlhf.scoring import score_texts

    cfg, results = tiny_run
    tokenizer, rm = load_reward_model(str(results["reward"].path(cfg.output_dir)))
    prompt = "\n\nHuman: What is the capital of France?\n\nAssistant:"
    response = " The capital of France is Paris. I hope this helps!"
    tokens = leave_one_out(rm, tokenizer, prompt, response)
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert [t for t, _ in tokens] == [tokenizer.decode([i]) for i in ids]
    full = float(score_texts(rm, tokenizer, [prompt], [response])[0])
    k = len(ids) // 2  # naive: the text without token k, scored on its own
    without_k = tokenizer.decode(ids[:k]) + tokenizer.decode(ids[k + 1:])
    assert tokens[k][1] == pytest.approx(full - float(score_texts(rm, tokenizer, [prompt], [without_k])[0]),
                                         abs=1e-5)


@pytest.mark.slow
def test_the_interpret_stage_probes_every_layer_and_attributes_three_examples(tiny_run):
    cfg, results = tiny_run
    out = results["interpret"].path(cfg.output_dir)
    saved = json.loads((out / "probes.json").read_text())
    layers = int(results["interpret"].metrics["interpret/layers"])
    assert layers == cfg.model.tiny.n_layer
    for feature in ("correct", "hedge", "filler", "refusal", "length"):
        assert len(saved["probes"][feature]["layers"]) == layers + 1, feature
    # The planted bias: preference labels favour the filler, so the reward model's score lies along the filler
    # probe's direction (0.98 of its variance on this tiny model); length is readable from the last layer too.
    probes = saved["probes"]
    assert probes["filler"]["score_r2"] > 0.5 and probes["filler"]["score_r2"] > probes["hedge"]["score_r2"]
    assert max(probes["filler"]["layers"]) > probes["filler"]["baseline"]
    assert probes["length"]["layers"][-1] > 0.2
    assert set(saved["examples"]) == {"correct answer", "hedged wrong answer", "filler-padded answer"}
    assert (out / "probes.png").is_file() and len(list(out.glob("attribution_*.png"))) == 3


@pytest.mark.slow
def test_the_interpret_stage_on_hh_attributes_replies_and_tables_words(tmp_path):
    """HH has no gold: an untrained MiniLM reward model (response_mean) on 20 held-out shared pairs. The stage's
    length correlation, words table and attributions against the same quantities computed here."""
    from minirlhf.config import PipelineConfig
    from minirlhf.data.prepare import run_data
    from minirlhf.data.task import read_jsonl
    from minirlhf.interpret import run_interpret
    from minirlhf.models import load_reward_model
    from minirlhf.scoring import score_texts
    from tests.conftest import SHARED_HH_FILE, require_real_model, require_shared_hh

    require_shared_hh()
    require_real_model("minilm")
    cfg = PipelineConfig.model_validate({
        "output_dir": str(tmp_path / "out"),
        "data": {"source": "hh", "hh_path": str(SHARED_HH_FILE), "hh_limit": 120, "hh_n_train": 100},
        "model": {"reward_backbone": "minilm"}, "reward": {"pooling": "response_mean"},
        "interpret": {"enabled": True, "word_responses": 6, "word_min_count": 1}})
    run_data(cfg, tmp_path / "data")
    torch.manual_seed(0)
    tokenizer, rm = load_reward_model("minilm", pooling="response_mean", response_marker="Assistant:")
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")

    result = run_interpret(cfg, tmp_path / "data", tmp_path / "rm", tmp_path / "interpret")
    m, out = result.metrics, tmp_path / "interpret"
    pairs = read_jsonl(tmp_path / "data" / "pairs_test.jsonl")
    rows = [(p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected")]
    assert m["interpret/n_responses"] == 2 * len(pairs) == 40 and m["interpret/word_responses"] == 6
    _, rm = load_reward_model(str(tmp_path / "rm"))
    n = cfg.reward.max_length  # the stage scores texts as the reward model trained: cut from the left to this
    scores = score_texts(rm, tokenizer, [p for p, _ in rows], [r for _, r in rows], max_length=n)
    lengths = torch.tensor([float(len(r.split())) for _, r in rows])
    assert m["interpret/length_corr"] == pytest.approx(float(torch.corrcoef(torch.stack([scores, lengths]))[0, 1]),
                                                       abs=1e-4)
    saved = json.loads((out / "probes.json").read_text())
    per_reply = [leave_one_out(rm, tokenizer, p, r, n) for p, r in rows[:6]]
    assert sum(w["count"] for w in saved["words"]) == sum(1 for t in per_reply for tok, _ in t if tok.strip())
    assert [w["word"] for w in saved["words"]] == [w["word"] for w in word_effects(per_reply, 1)]
    examples = saved["examples"]
    assert {"highest-scored reply", "lowest-scored reply"} <= set(examples)
    score_of = {r: float(s) for (_, r), s in zip(rows, scores)}
    highest, lowest = (examples[f"{end}-scored reply"]["response"] for end in ("highest", "lowest"))
    assert score_of[highest] >= score_of[lowest]
    top = examples["highest-scored reply"]
    again = leave_one_out(rm, tokenizer, top["prompt"], top["response"], n)
    assert [t for t, _ in again] == [t for t, _ in top["tokens"]]
    assert [e for _, e in again] == pytest.approx([e for _, e in top["tokens"]], abs=1e-5)
    assert (out / "words.png").is_file() and len(list(out.glob("attribution_*.png"))) == len(examples)
