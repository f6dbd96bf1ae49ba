"""The constitution file (minirlhf/constitution.py): the shipped one loads; malformed ones fail at load with one line
naming the entry (fast tier)."""

import random

import pytest

from minirlhf.config import ConfigError
from minirlhf.constitution import DEFAULT, load_constitution

PRINCIPLE = """  - name: {name}
    critique_request: Say what is harmful.
    revision_request: Rewrite it without harm.
    choice_question: Which is less harmful?
"""


def write(tmp_path, text):
    path = tmp_path / "constitution.yaml"
    path.write_text(text)
    return path


def test_the_shipped_constitution_loads_with_principles_and_examples():
    constitution = load_constitution(DEFAULT)
    assert len(constitution.principles) >= 3 and constitution.few_shot
    assert len({p.name for p in constitution.principles}) == len(constitution.principles)


def test_a_principle_is_drawn_per_example_reproducibly_with_the_seed():
    constitution = load_constitution(DEFAULT)
    draws = [constitution.choose(random.Random(7)).name for _ in range(3)]
    assert len(set(draws)) == 1  # the same seed, the same principle
    many = {constitution.choose(rng).name for rng in [random.Random(0)] for _ in range(200)}
    assert many == {p.name for p in constitution.principles}  # over many examples, every principle is used


@pytest.mark.parametrize("text, expected", [
    ("principles:\n" + PRINCIPLE.format(name="harm").replace("    revision_request: Rewrite it without harm.\n", ""),
     r"principles\[0\] \('harm'\): revision_request: Field required"),
    ("principles: []\n", r"principles: List should have at least 1 item"),
    ("principles:\n" + PRINCIPLE.format(name="harm") + "    severity: high\n",
     r"principles\[0\] \('harm'\): severity: unknown key \(allowed: choice_question, critique_request, name, "
     r"revision_request\)"),
    ("principles:\n" + PRINCIPLE.format(name="a") + "rules: []\n",
     r"rules: unknown key \(allowed: few_shot, principles\)"),
    ("principles:\n" + PRINCIPLE.format(name="a") + PRINCIPLE.format(name="a"), r"principle name\(s\) a appear more"),
    ("few_shot: []\n", r"principles: Field required"),
    ("principles:\n" + PRINCIPLE.format(name="a") + "few_shot:\n  - prompt: p\n    response: r\n    critique: c\n",
     r"few_shot\[0\]: revision: Field required"),
])
def test_a_malformed_constitution_fails_at_load_with_one_line_naming_the_entry(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_constitution(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))


def test_a_file_that_is_no_yaml_mapping_fails_like_a_config(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        load_constitution(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="not found"):
        load_constitution(tmp_path / "missing.yaml")
