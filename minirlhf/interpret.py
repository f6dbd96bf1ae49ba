"""What the reward model computes: linear probes on its hidden states, and which tokens move a score.

Usage:
    from minirlhf.interpret import last_token_states, probe_layers, leave_one_out, run_interpret
    states = last_token_states(rm, tokenizer, prompts, responses)       # (layers + 1, n, width)
    table = probe_layers(states, labels, train=half)                     # {feature: [score per layer]}
    tokens = leave_one_out(rm, tokenizer, prompt, response)              # [(token, score - score without it)]
    result = run_interpret(cfg, data_dir, reward_dir, out_dir)           # the stage: probes.json, figures

Probes (Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes"): at every layer,
the hidden state at the token the reward model reads its score from (the last one, EOS) is the input of a linear
model trained on half of the held-out pairs' responses and scored on the other half: logistic regression for the
binary features (accuracy), ridge regression for length (R²). The embedded task knows the features of every
response: gold correctness (the gold annotator's main term is positive: a right answer, a refused harmful request,
a helpful benign one), the hedge ("I think", "Maybe", "I guess"), the filler phrase, a refusal, and the length in
words. The layer where a probe first gets good is where the feature becomes decodable; the squared correlation of
the reward model's score with the last layer's probe direction says how much of the score that feature explains.

Token attribution by leave-one-out (Li et al. 2016, "Understanding neural networks through representation
erasure"): a response token's attribution is the score of the text minus the score with that token removed;
exact for what it measures, one forward pass per token, no gradients.

On data without gold (HH-RLHF) no feature of a response is known, so there are no probes: the stage attributes the
held-out replies the reward model scores highest and lowest and one pair it gets wrong, averages every token's
leave-one-out effect over `interpret.word_responses` replies (the words it rewards and punishes most), and
correlates its score with the reply's length.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import torch

from minirlhf.config import PipelineConfig
from minirlhf.data.gold import FILLER, NotATaskPrompt, gold_score, is_refusal
from minirlhf.data.task import HEDGES, read_jsonl
from minirlhf.models import load_reward_model
from minirlhf.scoring import score_texts, scoring_batches
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output

FEATURES = ("correct", "hedge", "filler", "refusal", "length")
BINARY = ("correct", "hedge", "filler", "refusal")
RESULTS = "probes.json"


def response_features(prompt: str, response: str) -> dict[str, float]:
    """The known features of one response of the embedded task (1.0 / 0.0; length in words)."""
    text = response.strip()
    try:
        correct = float(gold_score(prompt, text).main > 0)
    except NotATaskPrompt:
        correct = float("nan")
    return {"correct": correct, "hedge": float(any(text.startswith(h) for h in HEDGES)),
            "filler": float(FILLER in text), "refusal": float(is_refusal(text)), "length": float(len(text.split()))}


@torch.no_grad()
def last_token_states(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 64,
                      max_length: int = 512) -> torch.Tensor:
    """(layers + 1, n, width): every layer's hidden state at the last real token of `prompt + response + EOS`, the
    token the sequence classifier reads its score from (the texts exactly as minirlhf.scoring.score_texts builds
    them)."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for batch in scoring_batches(tokenizer, prompts, responses, batch_size, max_length, device):
        hidden = model(**batch, output_hidden_states=True).hidden_states  # layers + 1 x (b, seq, width)
        mask = batch["attention_mask"]  # (b, seq)
        last = (mask * torch.arange(mask.shape[1], device=device)).argmax(1)  # (b,): last attended, either padding
        rows = torch.arange(len(mask), device=device)
        chunks.append(torch.stack([h[rows, last] for h in hidden]).float().cpu())
    return torch.cat(chunks, dim=1)


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, steps: int = 200) -> torch.Tensor:
    """Weights (width + 1,) of an L2-regularised logistic regression (bias last), by L-BFGS: a convex problem,
    so the probe's score says what the features hold, not how the optimiser did."""
    x1 = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    w = torch.zeros(x1.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x1 @ w, y.double()) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float()


def fit_ridge(x: torch.Tensor, y: torch.Tensor, l2: float = 1.0) -> torch.Tensor:
    """Weights (width + 1,) of ridge regression (bias last), closed form."""
    x1 = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    penalty = l2 * torch.eye(x1.shape[1], dtype=torch.float64)
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    return torch.linalg.solve(x1.T @ x1 + penalty, x1.T @ y.double()).float()


def r_squared(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp_min(1e-12))


def probe(x_train, y_train, x_test, y_test, binary: bool) -> tuple[float, torch.Tensor]:
    """A probe's held-out score (accuracy, or R² for a number) and its direction in standardised state space."""
    x_train, x_test = _standardise(x_train, x_test)
    if binary:
        w = fit_logistic(x_train, y_train)
        pred = (torch.cat([x_test, torch.ones(len(x_test), 1)], 1) @ w) > 0
        return float((pred.float() == y_test).float().mean()), w[:-1]
    w = fit_ridge(x_train, y_train)
    return r_squared(torch.cat([x_test, torch.ones(len(x_test), 1)], 1) @ w, y_test), w[:-1]


def probe_layers(states: torch.Tensor, labels: dict[str, torch.Tensor], train: torch.Tensor,
                 scores: torch.Tensor | None = None) -> dict[str, dict]:
    """Per feature: the held-out score of a probe at every layer (`layers`), the first layer within 0.02 of the best
    (`decodable_at`), the majority-class (or mean) baseline, and, with the reward model's `scores`, the share of
    their variance the last layer's probe direction explains (`score_r2`, squared correlation). `train`: a bool
    mask over the n examples; the rest is the test half."""
    table = {}
    for feature, y in labels.items():
        keep = ~torch.isnan(y)
        tr, te = train & keep, ~train & keep
        binary = feature in BINARY
        if binary and len(set(y[tr].tolist())) < 2:
            continue  # a feature absent from the training half cannot be probed
        layers, direction = [], None
        for layer in range(states.shape[0]):
            value, direction = probe(states[layer][tr], y[tr], states[layer][te], y[te], binary)
            layers.append(value)
        best = max(layers)
        base = (max(float(y[te].mean()), 1 - float(y[te].mean())) if binary else 0.0)
        row = {"layers": layers, "decodable_at": next(i for i, v in enumerate(layers) if v >= best - 0.02),
               "baseline": base, "binary": binary}
        if scores is not None:
            last, _ = _standardise(states[-1][tr], states[-1][te])
            projection = last @ direction
            row["score_r2"] = float(torch.corrcoef(torch.stack([projection, scores[tr]]))[0, 1] ** 2)
        table[feature] = row
    return table


@torch.no_grad()
def leave_one_out(model, tokenizer, prompt: str, response: str, max_length: int = 512) -> list[tuple[str, float]]:
    """For each token of `response`: (its text, score of the whole - score without it); texts cut from the left to
    `max_length` tokens, as the reward model was scored in its own evaluation."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode(ids[:i]) for i in range(len(ids) + 1)]
    # Dropping token i: the text of the tokens before it plus the text of those after (decoded apart, so a
    # token's removal never changes how its neighbours are spelled).
    without = [tokenizer.decode(ids[:i]) + tokenizer.decode(ids[i + 1 :]) for i in range(len(ids))]
    scores = score_texts(model, tokenizer, [prompt] * (len(without) + 1), [pieces[-1], *without],
                         max_length=max_length)
    full = float(scores[0])
    return [(tokenizer.decode([t]), full - float(s)) for t, s in zip(ids, scores[1:])]


def pick_examples(rows: list[dict]) -> dict[str, dict]:
    """From responses with features: a correct concise one, a hedged wrong one, a filler-padded one."""
    wanted = {"correct answer": lambda f: f["correct"] == 1 and not f["hedge"] and not f["filler"],
              "hedged wrong answer": lambda f: f["hedge"] == 1 and f["correct"] == 0,
              "filler-padded answer": lambda f: f["filler"] == 1 and f["correct"] == 1}
    return {name: next(r for r in rows if test(r["features"])) for name, test in wanted.items()
            if any(test(r["features"]) for r in rows)}


def word_effects(attributions: list[list[tuple[str, float]]], min_count: int) -> list[dict]:
    """Each token's mean leave-one-out effect over the responses it occurs in (lower-cased, stripped), for tokens
    seen at least `min_count` times; most rewarded first."""
    seen: dict[str, list[float]] = {}
    for tokens in attributions:
        for token, effect in tokens:
            word = token.strip().lower()
            if word:
                seen.setdefault(word, []).append(effect)
    table = [{"word": w, "mean_effect": sum(v) / len(v), "count": len(v)} for w, v in seen.items()
             if len(v) >= min_count]
    return sorted(table, key=lambda row: -row["mean_effect"])


def pick_hh_examples(rows: list[dict], scores: torch.Tensor, max_tokens: int, tokenizer) -> dict[str, dict]:
    """Replies short enough to draw (<= max_tokens): the highest- and lowest-scored, and the rejected reply of the
    pair the reward model gets most wrong (rows alternate chosen, rejected)."""
    short = [i for i, r in enumerate(rows)
             if len(tokenizer(r["response"], add_special_tokens=False)["input_ids"]) <= max_tokens]
    if not short:
        return {}
    picked = {"highest-scored reply": max(short, key=lambda i: scores[i]),
              "lowest-scored reply": min(short, key=lambda i: scores[i])}
    wrong = [i for i in short if i % 2 == 1 and scores[i] > scores[i - 1]]  # rejected above its chosen
    if wrong:
        picked["rejected reply scored above the chosen one"] = max(wrong, key=lambda i: scores[i] - scores[i - 1])
    return {name: rows[i] for name, i in picked.items()}


def interpret_without_gold(cfg: PipelineConfig, model, tokenizer, rows: list[dict]) -> tuple[dict, dict, list]:
    """(metrics, examples, words) for data with no known features: see the module docstring. Texts are scored at
    reward.max_length tokens, as the reward model trained and was evaluated."""
    from minirlhf.training import progress_bar

    max_length = cfg.reward.max_length
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    scores = score_texts(model, tokenizer, prompts, responses, max_length=max_length)  # (n,)
    lengths = torch.tensor([float(len(r.split())) for r in responses])
    picked = pick_hh_examples(rows, scores, 40, tokenizer)
    sample = rows[: cfg.interpret.word_responses]
    bar = progress_bar("interpret", len(picked) + len(sample))  # one reply's every token left out per update
    attributions = []
    for r in [*picked.values(), *sample]:
        attributions.append(leave_one_out(model, tokenizer, r["prompt"], r["response"], max_length))
        bar.update()
    bar.close()
    examples = {name: {"prompt": r["prompt"], "response": r["response"], "tokens": tokens}
                for (name, r), tokens in zip(picked.items(), attributions)}
    words = word_effects(attributions[len(picked) :], cfg.interpret.word_min_count)
    metrics = {"interpret/n_responses": float(len(rows)), "interpret/word_responses": float(len(sample)),
               "interpret/length_corr": float(torch.corrcoef(torch.stack([scores, lengths]))[0, 1])}
    return metrics, examples, words


def interpret_with_features(model, tokenizer, rows: list[dict]) -> tuple[dict, dict, dict]:
    """(metrics, examples, probe table) on the embedded task, whose response features are known."""
    for row in rows:
        row["features"] = response_features(row["prompt"], row["response"])
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    states = last_token_states(model, tokenizer, prompts, responses)  # (layers + 1, n, width)
    scores = score_texts(model, tokenizer, prompts, responses)  # (n,)
    labels = {f: torch.tensor([r["features"][f] for r in rows]) for f in FEATURES}
    # Split by pair (both responses of a pair on one side): the two halves share no prompt.
    train = torch.tensor([(i // 2) % 2 == 0 for i in range(len(rows))])
    table = probe_layers(states, labels, train, scores)
    examples = {name: {"prompt": r["prompt"], "response": r["response"],
                       "tokens": leave_one_out(model, tokenizer, r["prompt"], r["response"])}
                for name, r in pick_examples(rows).items()}
    metrics = {"interpret/n_responses": float(len(rows)), "interpret/layers": float(states.shape[0] - 1)}
    for feature, row in table.items():
        metrics |= {f"interpret/{feature}/layer{i}": v for i, v in enumerate(row["layers"])}
        metrics |= {f"interpret/{feature}/{k}": float(row[k]) for k in ("decodable_at", "baseline", "score_r2")
                    if k in row}
    return metrics, examples, table


def run_interpret(cfg: PipelineConfig, data_dir: Path, reward_dir: Path, out_dir: Path,
                  logger: MetricLogger | None = None) -> StageResult:
    """Probes per layer for each feature on the held-out pairs' responses, and leave-one-out attributions for
    three example responses. Metrics: interpret/<feature>/layer<i>, /decodable_at, /score_r2, /baseline. On data
    without gold (data.source: hh): attributions, the words table and interpret/length_corr instead of probes."""
    from minirlhf.plots import plot_attribution, plot_probes, plot_word_effects

    logger = logger or NullLogger()
    started = time.perf_counter()
    tokenizer, model = load_reward_model(str(reward_dir))
    pairs = read_jsonl(Path(data_dir) / "pairs_test.jsonl")
    rows = [{"prompt": p["prompt"], "response": p[side]} for p in pairs for side in ("chosen", "rejected")]
    if cfg.data.source == "hh":
        metrics, examples, words = interpret_without_gold(cfg, model, tokenizer, rows)
        saved = {"examples": examples, "words": words}
        figure, draw = "words.png", partial(plot_word_effects, words)
    else:
        metrics, examples, table = interpret_with_features(model, tokenizer, rows)
        saved = {"probes": table, "examples": examples}
        figure, draw = "probes.png", partial(plot_probes, table)
    logger.log_metrics(metrics, step=0)
    result = StageResult("interpret", metrics=metrics)
    with stage_output(out_dir, result) as tmp:
        (tmp / RESULTS).write_text(json.dumps(saved, indent=1))
        draw(tmp / figure)
        for i, (name, example) in enumerate(examples.items(), start=1):
            plot_attribution(name, example["tokens"], tmp / f"attribution_{i}.png")
        result.seconds = time.perf_counter() - started
    return result
