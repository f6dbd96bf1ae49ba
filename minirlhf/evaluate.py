"""Evaluate policies on held-out prompts: proxy and gold reward, KL to SFT, win rates, length, diversity.

Usage:
    from minirlhf.evaluate import run_eval
    result = run_eval(cfg, data_dir, reward_dir, {"sft": sft_dir, "ppo": ppo_dir}, out_dir, logger)
    result.metrics["eval/ppo/gold_reward"], result.metrics["eval/ppo/win_rate_gold"]

Every policy answers the same prompts with the same sampling seed. Metric names: `eval/<policy>/<name>`:
  proxy_reward, gold_reward   mean reward-model score and mean gold score (embedded task only)
  kl                          sequence-level KL to SFT, estimated on the policy's own samples:
                              mean over samples of sum_t [log pi(y_t) - log pi_sft(y_t)] (k1)
  win_rate_gold, tie_rate_gold, win_rate_proxy
                              share of prompts whose response beats SFT's on the same prompt (strictly)
  response_length, eos_rate, distinct_1, distinct_2, refusal_rate_benign, refusal_rate_harmful
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from minirlhf.config import PipelineConfig
from minirlhf.data.gold import gold_or_none, is_refusal
from minirlhf.data.task import read_jsonl
from minirlhf.detect import degenerate_rates, detect_failures
from minirlhf.models import load_policy, load_reward_model, resolve_device
from minirlhf.generation import decode_responses, encode_prompts, sample_responses, sampling_config, sequence_logprob
from minirlhf.ppo.trainer import CURVE, read_curve
from minirlhf.scoring import score_texts
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output

log = logging.getLogger("minirlhf")


def sample(policy, tokenizer, prompts: list[str], cfg: PipelineConfig, seed: int, batch_size: int = 64):
    """Sample one response per prompt, in batches. Yields (texts, response ids, masks, has_eos, query ids,
    query masks)."""
    gen = sampling_config(tokenizer, cfg.eval.temperature, cfg.eval.max_new_tokens)
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        query_ids, query_mask = encode_prompts(tokenizer, prompts[i : i + batch_size], cfg.model.max_prompt_length,
                                               next(policy.parameters()).device)
        response_ids, mask, has_eos = sample_responses(policy, tokenizer, query_ids, query_mask, gen)
        out.append((decode_responses(tokenizer, response_ids, mask), response_ids, mask, has_eos, query_ids,
                    query_mask))
    return out


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(t.split()[i : i + n]) for t in texts for i in range(max(0, len(t.split()) - n + 1))]
    return len(set(grams)) / len(grams) if grams else 0.0


def evaluate_policy(name: str, policy, tokenizer, sft_policy, rm, rm_tokenizer, rows: list[dict],
                    cfg: PipelineConfig) -> tuple[dict, list[dict]]:
    prompts = [r["prompt"] for r in rows]
    texts, kls, eos = [], [], []
    for batch_texts, response_ids, mask, has_eos, query_ids, query_mask in sample(policy, tokenizer, prompts, cfg,
                                                                                  cfg.eval.seed):
        logp = sequence_logprob(policy, query_ids, query_mask, response_ids, mask, cfg.eval.temperature)
        ref_logp = sequence_logprob(sft_policy, query_ids, query_mask, response_ids, mask, cfg.eval.temperature)
        texts += batch_texts
        kls += (logp - ref_logp).tolist()
        eos += has_eos.tolist()
    proxy = score_texts(rm, rm_tokenizer, prompts, texts).tolist()
    gold = [gold_or_none(p, t) for p, t in zip(prompts, texts)]
    samples = [{"prompt_id": r.get("prompt_id"), "intent": r.get("intent"), "prompt": p, "response": t,
                "proxy_reward": s, "gold_reward": g, "kl": k}
               for r, p, t, s, g, k in zip(rows, prompts, texts, proxy, gold, kls)]
    m = {
        "proxy_reward": sum(proxy) / len(proxy),
        "kl": sum(kls) / len(kls),
        "response_length": sum(len(t.split()) for t in texts) / len(texts),
        "eos_rate": sum(eos) / len(eos),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }
    if all(g is not None for g in gold):
        m["gold_reward"] = sum(gold) / len(gold)
    for intent in ("benign", "harmful"):
        refusals = [is_refusal(s["response"]) for s in samples if s["intent"] == intent]
        if refusals:
            m[f"refusal_rate_{intent}"] = sum(refusals) / len(refusals)
    return {f"eval/{name}/{k}": v for k, v in m.items()}, samples


def win_rates(name: str, samples: list[dict], baseline: list[dict]) -> dict[str, float]:
    out = {}
    for key, label in (("gold_reward", "gold"), ("proxy_reward", "proxy")):
        pairs = [(a[key], b[key]) for a, b in zip(samples, baseline) if a[key] is not None and b[key] is not None]
        if pairs:
            out[f"eval/{name}/win_rate_{label}"] = sum(a > b for a, b in pairs) / len(pairs)
            out[f"eval/{name}/tie_rate_{label}"] = sum(a == b for a, b in pairs) / len(pairs)
    return out


def run_eval(cfg: PipelineConfig, data_dir: Path, reward_dir: Path, policies: dict[str, Path], out_dir: Path,
             logger: MetricLogger | None = None) -> StageResult:
    """Evaluate each policy in `policies` (which must include "sft", the KL and win-rate baseline)."""
    logger = logger or NullLogger()
    started = time.perf_counter()
    rows = read_jsonl(Path(data_dir) / "eval_prompts.jsonl")[: cfg.eval.n_prompts]
    device = resolve_device(cfg.model.device)
    rm_tokenizer, rm = load_reward_model(str(reward_dir))
    rm.to(device).eval()
    tokenizer, sft_policy = load_policy(str(policies["sft"]))
    sft_policy.to(device)
    metrics: dict[str, float] = {}
    all_samples: dict[str, list[dict]] = {}
    for name, path in policies.items():
        policy = sft_policy if name == "sft" else load_policy(str(path))[1].to(device)
        m, samples = evaluate_policy(name, policy, tokenizer, sft_policy, rm, rm_tokenizer, rows, cfg)
        metrics |= m
        all_samples[name] = samples
        logger.log_samples(samples, step=0, policy=name)
    for name, samples in all_samples.items():
        if name != "sft":
            metrics |= win_rates(name, samples, all_samples["sft"])
    # Reward hacking, detected and shown (minirlhf/detect.py): over each policy against SFT and over training curves.
    curves = {name: read_curve(Path(path) / CURVE) for name, path in policies.items() if (Path(path) / CURVE).is_file()}
    events = detect_failures(metrics, all_samples, curves, cfg.detect)
    metrics |= degenerate_rates(all_samples)
    for name in all_samples:
        metrics[f"eval/{name}/failure_events"] = float(sum(e.policy == name for e in events))
    for e in events:
        log.warning("failure event: %s (%s)", e.message, e.kind)
        logger.log_failure_event(e.kind, e.message, step=e.step, severity=e.severity,
                                 evidence={"policy": e.policy, **e.evidence}, examples=e.examples)
    result = StageResult("eval", "", "", metrics=metrics)
    with stage_output(out_dir, result) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (tmp / "samples.json").write_text(json.dumps(all_samples, indent=1))
        (tmp / "failure_events.json").write_text(json.dumps([e.to_dict() for e in events], indent=1))
        result.seconds = time.perf_counter() - started
    return result
