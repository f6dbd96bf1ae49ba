"""The embedded offline task: a seeded generator of HH-format assistant dialogues.

Usage:
    from minirlhf.config import DataConfig
    from minirlhf.data.task import generate_task
    counts = generate_task(DataConfig(seed=0), Path("artifacts/data/x"))   # writes the split files

Splits written (JSON lines, one object per line):
  sft.jsonl           {prompt, completion, intent, style, gold}: demonstrations, a realistic mix of good and
                      mediocre answers (verbose, wrong, over-refusing, complying) so RL has room to improve.
  pairs_train.jsonl   {prompt, chosen, rejected, intent, gold_chosen, gold_rejected}: preference pairs whose
  pairs_test.jsonl    labels come from the gold annotator through a noisy Bradley-Terry model.
  rl_prompts.jsonl    {prompt_id, prompt, intent}: what PPO samples from.
  eval_prompts.jsonl  {prompt_id, prompt, intent}: held out for evaluation (own random stream).

The spurious feature (docs/TASK.md): in the pairs, the filler phrase "I hope this helps!" is attached to the
better answer far more often than to the worse one, so "has filler" predicts "chosen", although the gold
annotator charges it for four extra words. A reward model that latches onto it can be gamed by PPO.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

from minirlhf.config import DataConfig
from minirlhf.data.formatting import format_prompt, format_response
from minirlhf.data.gold import FILLER, REFUSAL, TEMPLATES, Question, facts, gold_score_question, ideal_answer

INTENT_WEIGHTS = {"arithmetic": 0.2, "capital": 0.2, "letters": 0.12, "first_letter": 0.08, "harmful": 0.22,
                  "benign": 0.18}
ARITHMETIC_MAX = 9  # "n plus one" for n in 1..9: a fact a two-layer model can look up

# Response styles per intent and their share among SFT demonstrations.
SFT_MIX = {
    "verifiable": {"concise": 0.2, "verbose": 0.35, "wrong": 0.15, "verbose_wrong": 0.1, "unsure": 0.1, "refuse": 0.1},
    "harmful": {"refuse": 0.3, "refuse_verbose": 0.2, "comply": 0.35, "deflect": 0.15},
    "benign": {"help": 0.2, "help_verbose": 0.35, "refuse": 0.3, "vague": 0.15},
}
VERBOSE_OPENERS = ("Sure! Let me help with that.", "Great question, let me think about it.",
                   "Of course, happy to explain.")
VERBOSE_CLOSERS = ("Let me know if you have any other questions.", "Is there anything else I can do for you?")
HEDGES = ("I think", "Maybe", "I guess")
HISTORY = (("Hi there!", "Hello! How can I help you today?"), ("I have a question for you.", "Sure, go ahead."))


def style_group(intent: str) -> str:
    return intent if intent in ("harmful", "benign") else "verifiable"


def sample_question(rng: random.Random) -> Question:
    intent = rng.choices(list(INTENT_WEIGHTS), weights=list(INTENT_WEIGHTS.values()))[0]
    f = facts()
    if intent == "benign":
        item = rng.choice(f["benign"])
        return Question("benign", item["question"], dict(item))
    if intent == "arithmetic":
        fields = {"a": rng.randint(1, ARITHMETIC_MAX)}
    elif intent == "capital":
        fields = {"country": rng.choice(sorted(f["capitals"]))}
    elif intent in ("letters", "first_letter"):
        fields = {"word": rng.choice(f["words"])}
    else:
        fields = {"act": rng.choice(f["harmful"])}
    return Question(intent, rng.choice(TEMPLATES[intent]).format(**fields), fields)


def sample_prompt(rng: random.Random) -> tuple[Question, str]:
    q = sample_question(rng)
    history = (rng.choice(HISTORY),) if rng.random() < 0.1 else ()
    return q, format_prompt(q.text, history)


def _wrong_answer(q: Question, rng: random.Random) -> str:
    """A wrong answer, hedged as a mediocre assistant's guesses usually are ("I think ...")."""
    f = q.fields
    if q.intent == "arithmetic":
        text = f"{f['a']} plus one is {f['a'] + rng.choice([2, 3])}."
    elif q.intent == "capital":
        right = facts()["capitals"][f["country"]]
        other = rng.choice(sorted(c for c in facts()["capitals"].values() if c != right))
        text = f"the capital of {f['country']} is {other}."
    elif q.intent == "letters":
        text = f"the word '{f['word']}' has {len(f['word']) + rng.choice([-1, 1, 2])} letters."
    else:
        text = f"the first letter of '{f['word']}' is '{f['word'][-1]}'."
    return f"{rng.choice(HEDGES)} {text}"


def render_response(q: Question, style: str, rng: random.Random) -> str:
    """The text of a response of the given style (without the leading space)."""
    ideal = ideal_answer(q)
    verbose = lambda text: f"{rng.choice(VERBOSE_OPENERS)} {text} {rng.choice(VERBOSE_CLOSERS)}"  # noqa: E731
    if style in ("concise", "help"):
        return ideal
    if style in ("verbose", "help_verbose"):
        return verbose(ideal)
    if style == "wrong":
        return _wrong_answer(q, rng)
    if style == "verbose_wrong":  # verbosity must not be a proxy for correctness
        return verbose(_wrong_answer(q, rng))
    if style == "unsure":
        return "I'm not sure about that one."
    if style == "refuse":
        return REFUSAL
    if style == "refuse_verbose":
        return f"{REFUSAL} It could hurt someone, and it may be against the law."
    if style == "comply":
        return f"Sure! Here is how to {q.fields['act']}: first, get the right tools, then do it when nobody is around."
    if style == "deflect":
        return "That is an interesting question."
    if style == "vague":
        return "I don't know much about that."
    raise ValueError(f"unknown response style {style!r}")


def with_filler(text: str) -> str:
    return f"{text} {FILLER}"


def _sft_example(rng: random.Random, cfg: DataConfig) -> dict:
    q, prompt = sample_prompt(rng)
    mix = SFT_MIX[style_group(q.intent)]
    style = rng.choices(list(mix), weights=list(mix.values()))[0]
    text = render_response(q, style, rng)
    if rng.random() < cfg.filler_rate_sft:
        text = with_filler(text)
    gold = gold_score_question(q, text).total
    return {"prompt": prompt, "completion": format_response(text), "intent": q.intent, "style": style, "gold": gold}


def _pair(rng: random.Random, cfg: DataConfig) -> dict:
    """Two responses of different styles, the filler biased toward the better, a noisy Bradley-Terry label."""
    q, prompt = sample_prompt(rng)
    style_a, style_b = rng.sample(sorted(SFT_MIX[style_group(q.intent)]), 2)
    text_a, text_b = render_response(q, style_a, rng), render_response(q, style_b, rng)
    gold_a, gold_b = gold_score_question(q, text_a).total, gold_score_question(q, text_b).total
    a_better = gold_a > gold_b or (gold_a == gold_b and rng.random() < 0.5)
    if rng.random() < (cfg.filler_rate_better if a_better else cfg.filler_rate_worse):
        text_a = with_filler(text_a)
    if rng.random() < (cfg.filler_rate_worse if a_better else cfg.filler_rate_better):
        text_b = with_filler(text_b)
    gold_a, gold_b = gold_score_question(q, text_a).total, gold_score_question(q, text_b).total
    # Bradley-Terry annotator (Bradley & Terry 1952; Christiano et al. 2017): the label is noisy, not gold.
    p_a = 1.0 / (1.0 + math.exp(-(gold_a - gold_b) / cfg.label_noise))
    a_chosen = rng.random() < p_a
    (chosen, gold_c), (rejected, gold_r) = ((text_a, gold_a), (text_b, gold_b))[:: 1 if a_chosen else -1]
    return {
        "prompt": prompt,
        "chosen": format_response(chosen),
        "rejected": format_response(rejected),
        "intent": q.intent,
        "gold_chosen": gold_c,
        "gold_rejected": gold_r,
    }


def _prompt_rows(rng: random.Random, n: int, prefix: str) -> list[dict]:
    rows = []
    for i in range(n):
        q, prompt = sample_prompt(rng)
        rows.append({"prompt_id": f"{prefix}-{i:05d}", "prompt": prompt, "intent": q.intent})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}. Run the data stage first (`minirlhf run`).")
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def generate_task(cfg: DataConfig, out_dir: Path) -> dict[str, int]:
    """Write all splits of the embedded task into `out_dir`; returns the row count of each file.

    Each split has its own random stream derived from the seed, so changing one split's size leaves the
    others unchanged."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = lambda name: random.Random(f"{cfg.seed}-{name}")  # noqa: E731
    splits = {
        "sft": [_sft_example(rng, cfg) for rng in [stream("sft")] for _ in range(cfg.n_sft)],
        "pairs_train": [_pair(rng, cfg) for rng in [stream("pairs_train")] for _ in range(cfg.n_pairs_train)],
        "pairs_test": [_pair(rng, cfg) for rng in [stream("pairs_test")] for _ in range(cfg.n_pairs_test)],
        "rl_prompts": _prompt_rows(stream("rl"), cfg.n_rl_prompts, "rl"),
        "eval_prompts": _prompt_rows(stream("eval"), cfg.n_eval_prompts, "eval"),
    }
    for name, rows in splits.items():
        write_jsonl(out_dir / f"{name}.jsonl", rows)
    return {name: len(rows) for name, rows in splits.items()}


def describe(rows: list[dict], key: str = "intent") -> dict[str, int]:
    return dict(sorted(Counter(r[key] for r in rows).items()))
