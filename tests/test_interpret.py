"""What the reward model computes (minirlhf/interpret.py): probes against naive references and planted features
(fast tier), the stage on the tiny pipeline's reward model (slow tier)."""

import json

import pytest
import torch

from minirlhf.interpret import fit_ridge, leave_one_out, probe_layers, r_squared, response_features


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
