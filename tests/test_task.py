"""The embedded task generator: deterministic, HH-formatted, with the designed-in spurious feature."""

import statistics

from minirlhf.config import DataConfig
from minirlhf.data.gold import FILLER, INTENTS, gold_score
from minirlhf.data.task import generate_task, read_jsonl


def _generate(tmp_path, **overrides):
    cfg = DataConfig(n_sft=400, n_pairs_train=600, n_pairs_test=200, n_rl_prompts=50, n_eval_prompts=40, **overrides)
    counts = generate_task(cfg, tmp_path)
    return cfg, counts, {name: read_jsonl(tmp_path / f"{name}.jsonl") for name in counts}


def test_splits_sizes_and_determinism(tmp_path):
    _, counts, splits = _generate(tmp_path / "a")
    assert counts == {"sft": 400, "pairs_train": 600, "pairs_test": 200, "rl_prompts": 50, "eval_prompts": 40}
    _, _, again = _generate(tmp_path / "b")
    assert splits == again
    _, _, other_seed = _generate(tmp_path / "c", seed=1)
    assert splits["sft"] != other_seed["sft"]


def test_hh_format_and_gold_consistency(tmp_path):
    _, _, splits = _generate(tmp_path)
    for row in splits["sft"]:
        assert row["prompt"].startswith("\n\nHuman: ") and row["prompt"].endswith("\n\nAssistant:")
        assert row["completion"].startswith(" ")
        assert gold_score(row["prompt"], row["completion"]).total == row["gold"]
    for row in splits["pairs_test"]:
        assert gold_score(row["prompt"], row["chosen"]).total == row["gold_chosen"]
    assert {r["intent"] for r in splits["sft"]} == set(INTENTS)


def test_sft_demonstrations_leave_room_to_improve(tmp_path):
    _, _, splits = _generate(tmp_path)
    golds = [r["gold"] for r in splits["sft"]]
    assert statistics.mean(golds) < 0.5  # a mediocre assistant, on purpose
    assert max(golds) == 1.0  # but the ideal answers are among the demonstrations


def test_labels_are_noisy_but_informative(tmp_path):
    _, _, splits = _generate(tmp_path)
    pairs = splits["pairs_train"]
    decided = [p for p in pairs if p["gold_chosen"] != p["gold_rejected"]]
    agree = sum(p["gold_chosen"] > p["gold_rejected"] for p in decided) / len(decided)
    assert 0.75 < agree < 0.99  # Bradley-Terry noise: mostly, not always, the gold choice


def test_filler_is_a_spurious_feature(tmp_path):
    _, _, splits = _generate(tmp_path)
    pairs = splits["pairs_train"]
    in_chosen = sum(FILLER in p["chosen"] for p in pairs) / len(pairs)
    in_rejected = sum(FILLER in p["rejected"] for p in pairs) / len(pairs)
    assert in_chosen > 2 * in_rejected  # the filler predicts "chosen" in the preference data ...
    prompt = pairs[0]["prompt"]
    answer = pairs[0]["chosen"].replace(" " + FILLER, "")
    # ... yet gold penalises it
    assert gold_score(prompt, f"{answer} {FILLER}").total < gold_score(prompt, answer).total


def test_noise_level_moves_the_ceiling(tmp_path):
    def agreement(noise):
        _, _, s = _generate(tmp_path / str(noise), label_noise=noise)
        decided = [p for p in s["pairs_train"] if p["gold_chosen"] != p["gold_rejected"]]
        return sum(p["gold_chosen"] > p["gold_rejected"] for p in decided) / len(decided)

    assert agreement(0.05) > agreement(1.0)
