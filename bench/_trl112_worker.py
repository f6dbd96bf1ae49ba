"""TRL 1.12.0's PPOTrainer on our demo foundation: the worker that bench/trl_ppo_peer.py runs in its own venv.

Usage (bench/trl_ppo_peer.py builds the venv and calls this; by hand only to debug):
    bench/.venv-trl112/bin/python bench/_trl112_worker.py --sft-dir D --reward-dir D --data-dir D --out-dir D \
        --params '{"total_episodes": 3840, "per_device_train_batch_size": 64, ...}'

It imports nothing from minirlhf (the project venv has TRL 1.16, which has no PPO), and follows TRL 1.12's own
example script (examples/scripts/ppo/ppo.py): policy and reference from the SFT directory, reward model and value
model from the reward directory (AutoModelForSequenceClassification, num_labels=1), prompts tokenized to ids with
left padding. `--params` carries PPOConfig fields, set by the caller from our config. It writes
`<out-dir>/policy/` (the trained policy and tokenizer) and `<out-dir>/result.json` (timings, versions, TRL's logs).
TRL itself is used as released: nothing here patches it.

`--lora` (a JSON object: r, alpha, dropout, target_modules) trains LoRA adapters as TRL's example does with
`--use_peft`: PPOTrainer wraps the policy in them and, given no `ref_model`, uses the policy with its adapters
switched off as the reference (one model fewer in memory than ours, which keeps a frozen copy). The value model
trains in full on both sides. The adapters are merged into the weights before saving, so our evaluation loads a
plain checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402  (1.12.0: the last release with PPO)


def read_prompts(path: Path, tokenizer, max_prompt_length: int) -> Dataset:
    """Prompts as token ids, cut from the left to `max_prompt_length` as our trainer does (padding: the collator)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ids = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"][-max_prompt_length:] for r in rows]
    return Dataset.from_dict({"input_ids": ids, "lengths": [len(i) for i in ids]})


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--sft-dir", "--reward-dir", "--data-dir", "--out-dir"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--max-prompt-length", type=int, default=64)
    parser.add_argument("--params", required=True, help="JSON object of PPOConfig fields")
    parser.add_argument("--lora", default=None, help="JSON object: r, alpha, dropout, target_modules (default: off)")
    args = parser.parse_args()
    params = json.loads(args.params)
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # PPOTrainer seeds torch only; its minibatch shuffles use numpy's global RNG (np.random.permutation), which it
    # never seeds. transformers.set_seed seeds python, numpy and torch, so a rerun reproduces the run.
    transformers.set_seed(params.get("seed", 0))

    started = time.perf_counter()
    # As TRL's example script: left padding for generation; the SFT tokenizer already has a pad distinct from EOS.
    tokenizer = AutoTokenizer.from_pretrained(args.sft_dir, padding_side="left")
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id, "need PAD != EOS"
    policy = AutoModelForCausalLM.from_pretrained(args.sft_dir, dtype=torch.float32)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        lora = json.loads(args.lora)
        peft_config = LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"],
                                 lora_dropout=lora["dropout"], target_modules=lora["target_modules"])
    # TRL's example passes no reference with PEFT: the trainer then reads it off the policy with adapters disabled.
    ref_policy = None if peft_config else AutoModelForCausalLM.from_pretrained(args.sft_dir, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_dir, num_labels=1,
                                                                      dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward_dir, num_labels=1, dtype=torch.float32)
    train_dataset = read_prompts(args.data_dir / "rl_prompts.jsonl", tokenizer, args.max_prompt_length)
    eval_dataset = read_prompts(args.data_dir / "eval_prompts.jsonl", tokenizer, args.max_prompt_length)

    config = PPOConfig(output_dir=str(out_dir / "trainer"), **params)
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy, reward_model=reward_model,
        value_model=value_model, train_dataset=train_dataset, eval_dataset=eval_dataset, peft_config=peft_config,
    )
    train_started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_started
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)  # policy (adapters) + value
    if peft_config:  # save_model would write the adapters alone; our evaluation loads a plain checkpoint
        policy = trainer.accelerator.unwrap_model(trainer.model).policy.merge_and_unload()
        policy.save_pretrained(out_dir / "policy")
    else:
        trainer.save_model(str(out_dir / "policy"))  # the policy only (TRL swaps out the value model to save)
    tokenizer.save_pretrained(out_dir / "policy")  # our evaluation loads the tokenizer from the policy dir
    wall_s = time.perf_counter() - started

    result = {
        "wall_s": wall_s,  # model loading + trainer set-up + train + save
        "train_s": train_s,  # PPOTrainer.train() alone
        "episodes": trainer.state.episode,
        "updates": trainer.state.global_step,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                     "accelerate": __import__("accelerate").__version__,
                     "datasets": __import__("datasets").__version__},
        "threads": torch.get_num_threads(),
        "lora": json.loads(args.lora) if args.lora else None,
        "trainable_params": trainable,
        "config": {k: getattr(config, k) for k in ("total_episodes", "batch_size", "mini_batch_size",
                                                  "num_mini_batches", "num_ppo_epochs", "learning_rate",
                                                  "response_length", "temperature",
                                                  "kl_coef", "missing_eos_penalty", "num_total_batches", "bf16",
                                                  "gradient_checkpointing", "adam_epsilon", "weight_decay",
                                                  "max_grad_norm", "num_sample_generations")},
        "log_history": trainer.state.log_history,  # TRL's per-update metrics (objective/scores, objective/kl, eps, ...)
        "policy_dir": str(out_dir / "policy"),
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"TRL {trl.__version__} PPO: {result['episodes']} episodes in {train_s:.1f} s (train), {wall_s:.1f} s (wall)")


if __name__ == "__main__":
    main()
