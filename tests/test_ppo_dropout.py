"""PPO on models as real ones are: dropout on (GPT-2's 0.1, LoRA's 0.05) and a generation_config.json that asks for
other sampling. The first minibatch of every step has ratio 1, rollout logprobs are those of the distribution
`generate` sampled from, rollout passes are deterministic, a retry's learning rate is scaled once (never
compounded), and a resume restores every RNG. Tiny models built here; no pipeline run."""

import copy
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from minirlhf.config import TinyModelConfig, load_config
from minirlhf.generation import sampling_config
from minirlhf.models import build_tiny
from minirlhf.ppo.trainer import TRAINER_STATE, PPOUnstable, build_trainer, checkpoint_dir_for, run_ppo
from minirlhf.stage import NullLogger

WORDS = "the cat dog sat ran on a mat log red blue big small quick lazy fox jumps over under near far".split()
PROMPTS = [f"Say something about the {a} {b}:" for a in WORDS[8:14] for b in WORDS[:6]]
CORPUS = PROMPTS + [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) for i in range(60)]
# What a hub checkpoint's generation_config.json may say (Llama-style sampling plus penalties). transformers 5.23
# applies any of these that the config passed to `generate` leaves unset.
CHECKPOINT_SAMPLING = dict(do_sample=True, temperature=0.6, top_k=50, top_p=0.9, repetition_penalty=1.5,
                           no_repeat_ngram_size=2, min_new_tokens=5, suppress_tokens=[20, 21], bad_words_ids=[[22]])
TINY_PPO = ["ppo.batch_size=8", "ppo.mini_batch_size=4", "ppo.num_ppo_epochs=2", "ppo.max_new_tokens=10",
            "ppo.temperature=0.7", "ppo.steps=6", "ppo.checkpoint_every=3", "ppo.keep_checkpoints=2",
            "model.device=cpu", "model.max_prompt_length=32"]
GPT2_DROPOUT = 0.1
LORA_DROPOUT = 0.05


def make_tiny_dirs(root: Path, tiny: TinyModelConfig) -> tuple[Path, Path, Path]:
    """(data_dir with rl_prompts.jsonl, policy dir whose generation_config.json sets CHECKPOINT_SAMPLING,
    reward dir)."""
    data_dir, sft_dir, reward_dir = root / "data", root / "sft", root / "reward"
    data_dir.mkdir(parents=True)
    (data_dir / "rl_prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "intent": "chat"}) + "\n"
                                                       for p in PROMPTS))
    tokenizer, policy = build_tiny(tiny, CORPUS)
    policy.generation_config.update(**CHECKPOINT_SAMPLING)
    policy.save_pretrained(sft_dir)
    tokenizer.save_pretrained(sft_dir)
    torch.manual_seed(1)
    policy_config = {k: v for k, v in policy.config.to_dict().items() if k not in ("id2label", "label2id")}
    reward_config = GPT2Config.from_dict({**policy_config, "num_labels": 1})
    reward = GPT2ForSequenceClassification(reward_config)
    reward.save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)
    return data_dir, sft_dir, reward_dir


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> tuple[Path, Path, Path]:
    tiny = TinyModelConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=320, dropout=GPT2_DROPOUT)
    return make_tiny_dirs(tmp_path_factory.mktemp("tiny"), tiny)


def tiny_cfg(tmp_path: Path, *extra: str):
    return load_config(None, TINY_PPO + list(extra) + [f"output_dir={tmp_path}"])


def trainer_for(cfg, dirs, tmp_path: Path):
    return build_trainer(cfg, *dirs, tmp_path / "ppo.checkpoints")


def set_dropout(model: torch.nn.Module, p: float, only: str = "") -> None:
    """Switch dropout back on (p) in `model`'s nn.Dropout modules whose name contains `only`: the unfixed state."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and only in name:
            module.p = p


def first_minibatch_stats(trainer, steps: int) -> list[dict[str, float]]:
    """Train `steps` steps; the policy-loss stats of each step's first minibatch, where the policy is still the one
    that computed the rollout's logprobs, so the ratio must be exactly 1."""
    seen: list[tuple[int, dict]] = []
    guard_loss = trainer.guard_loss

    def recording_guard(loss, pg_stats):
        seen.append((trainer.step + 1, {k: float(v) for k, v in pg_stats.items()}))
        guard_loss(loss, pg_stats)

    trainer.guard_loss = recording_guard
    for _ in range(steps):
        trainer.train_step()
    firsts: dict[int, dict] = {}
    for step, stats in seen:
        firsts.setdefault(step, stats)
    return [firsts[step] for step in sorted(firsts)]


# ---- (a) dropout off: the first minibatch's ratio is 1 ---------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True], ids=["gpt2", "lora"])
def test_first_minibatch_ratio_is_one_with_dropout_in_the_config(dirs, tmp_path, lora):
    extra = ["model.lora.enabled=true", "model.lora.r=4", f"model.lora.dropout={LORA_DROPOUT}",
             "ppo.learning_rate=1e-2"] if lora else []
    trainer = trainer_for(tiny_cfg(tmp_path, *extra), dirs, tmp_path)
    for model in (trainer.policy, trainer.ref_policy, trainer.value_model):
        assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
        assert model.config.resid_pdrop == model.config.attn_pdrop == model.config.embd_pdrop == 0
    # step 2 too: there LoRA's B is no longer zero, so lora_dropout would show
    for stats in first_minibatch_stats(trainer, 2):
        assert stats["ratio_max"] == pytest.approx(1.0, abs=1e-6)
        assert stats["approxkl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("lora", [False, True], ids=["gpt2", "lora"])
def test_dropout_left_on_breaks_the_first_minibatch_ratio(dirs, tmp_path, lora):
    """The check above can fail: with dropout on again during the update (GPT-2's 0.1, or LoRA's 0.05 alone),
    the first minibatch's ratio moves off 1 before any optimiser step."""
    extra = ["model.lora.enabled=true", "model.lora.r=4", f"model.lora.dropout={LORA_DROPOUT}",
             "ppo.learning_rate=1e-2"] if lora else []
    trainer = trainer_for(tiny_cfg(tmp_path, *extra), dirs, tmp_path)
    if lora:
        set_dropout(trainer.policy, LORA_DROPOUT, only="lora_dropout")
    else:
        set_dropout(trainer.policy, GPT2_DROPOUT)
    stats = first_minibatch_stats(trainer, 2)[-1]
    assert stats["ratio_max"] > 1 + 1e-3
    assert stats["approxkl"] > 1e-6


# ---- (b) rollout logprobs are the sampling distribution --------------------------------------------------------------


def test_rollout_logprobs_match_what_generate_sampled_from(dirs, tmp_path, monkeypatch):
    trainer = trainer_for(tiny_cfg(tmp_path), dirs, tmp_path)
    assert trainer.policy.generation_config.repetition_penalty == 1.5  # the checkpoint's sampling settings were loaded
    generate = trainer.policy.generate
    processed_scores: list[torch.Tensor] = []

    def generate_keeping_scores(*args, generation_config, **kwargs):
        config = copy.deepcopy(generation_config)
        config.output_scores = config.return_dict_in_generate = True
        out = generate(*args, generation_config=config, **kwargs)
        processed_scores.append(torch.stack(out.scores, 1))  # (batch, resp_len, vocab) after every logits processor
        return out.sequences

    monkeypatch.setattr(trainer.policy, "generate", generate_keeping_scores)
    trainer.train_step()  # then a rollout after an update: the policy back from train mode
    processed_scores.clear()
    batch = trainer.rollout()
    sampled_logprobs = torch.log_softmax(processed_scores[0], -1).gather(
        -1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    real = batch.response_mask.bool()  # (batch, resp_len)
    assert real.any() and (batch.query_ids == trainer.tokenizer.pad_token_id).any()  # left padding exercised too
    assert (batch.logprobs - sampled_logprobs)[real].abs().max() < 1e-5

    # The test can fail: the same config straight into `generate` picks up the checkpoint's suppress_tokens etc.
    query_mask = (batch.query_ids != trainer.tokenizer.pad_token_id).long()
    config = copy.deepcopy(sampling_config(trainer.tokenizer, 0.7, 10))
    config.output_scores = config.return_dict_in_generate = True
    out = generate(input_ids=batch.query_ids, attention_mask=query_mask, generation_config=config)
    assert torch.isinf(torch.stack(out.scores, 1)).any()


# ---- (c) value passes in a rollout ---------------------------------------------------------------------------------


def test_value_passes_in_a_rollout_after_an_update_are_equal(dirs, tmp_path, monkeypatch):
    trainer = trainer_for(tiny_cfg(tmp_path), dirs, tmp_path)
    # even with dropout on, eval mode alone must make rollout passes agree
    set_dropout(trainer.value_model, GPT2_DROPOUT)
    trainer.train_step()
    assert trainer.value_model.training  # the update left it in train mode
    values = trainer._values
    gaps: list[float] = []

    def values_twice(*args, **kwargs):
        first, second = values(*args, **kwargs), values(*args, **kwargs)
        gaps.append(float((first - second).abs().max()))
        return first

    monkeypatch.setattr(trainer, "_values", values_twice)
    batch = trainer.rollout()
    assert gaps == [0.0]

    # The test can fail: the same two passes in train mode differ.
    trainer.value_model.train()
    query_mask = (batch.query_ids != trainer.tokenizer.pad_token_id).long()
    with torch.no_grad():
        values_twice(batch.query_ids, query_mask, batch.response_ids, batch.response_mask)
    assert gaps[-1] > 1e-3


# ---- (d) retry learning rate -----------------------------------------------------------------------------------------


class StepLogger(NullLogger):
    """Keeps each step's metrics; raises right after logging `crash_at` (a process dying between checkpoints)."""

    def __init__(self, crash_at: int | None = None):
        self.metrics: dict[int, dict[str, float]] = {}
        self.crash_at = crash_at

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.metrics[step] = dict(metrics)
        if step == self.crash_at:
            raise RuntimeError(f"crash after step {step} (test)")


def expected_lr(cfg, attempt: int, step: int) -> float:
    """`ppo/lr` logged at `step`: the lr after that step's scheduler step, i.e. the one step + 1 will run at
    (trainer.lr_lambda: linear decay), on attempt N's scaled base lr."""
    return cfg.ppo.learning_rate * cfg.ppo.lr_scale_on_retry ** (attempt - 1) * max(0.0, 1.0 - step / cfg.ppo.steps)


def test_retry_learning_rate_is_scaled_once_and_never_compounds(dirs, tmp_path):
    cfg = tiny_cfg(tmp_path)
    out = tmp_path / "ppo-out"
    with pytest.raises(PPOUnstable) as err:
        run_ppo(cfg, *dirs, out, StepLogger(), attempt=1, inject_nan_at_step=2)
    assert err.value.step == 2 and err.value.last_good_checkpoint is None  # before the first checkpoint (step 3)

    # Attempt 2 starts over at learning_rate * lr_scale_on_retry; it dies after step 4, leaving checkpoint step 3.
    second = StepLogger(crash_at=4)
    with pytest.raises(RuntimeError, match="crash after step 4"):
        run_ppo(cfg, *dirs, out, second, attempt=2)
    assert sorted(second.metrics) == [1, 2, 3, 4]
    # step 1 ran at lr * scale exactly (lambda(0) = 1); what it logs is the lr after its scheduler step
    assert second.metrics[1]["ppo/lr"] == cfg.ppo.learning_rate * cfg.ppo.lr_scale_on_retry * (1.0 - 1 / cfg.ppo.steps)
    for step, metrics in second.metrics.items():
        assert metrics["ppo/lr"] == expected_lr(cfg, 2, step), step
    assert [p.name for p in checkpoint_dir_for(out).iterdir()] == ["step-000003"]

    # Attempt 3 resumes from attempt 2's checkpoint at lr * scale**2, not the checkpoint's lr * scale (or * scale**3).
    third = StepLogger()
    result = run_ppo(cfg, *dirs, out, third, attempt=3)
    assert result.metrics["ppo/resumed_from_step"] == 3
    assert sorted(third.metrics) == [4, 5, 6]
    for step, metrics in third.metrics.items():
        assert metrics["ppo/lr"] == expected_lr(cfg, 3, step), step
    assert third.metrics[4]["ppo/lr"] == pytest.approx(cfg.ppo.learning_rate * 0.25 / 3, rel=1e-12)


# ---- (e) RNG states on resume ----------------------------------------------------------------------------------------


def test_resume_restores_python_random_state_exactly(dirs, tmp_path):
    cfg = tiny_cfg(tmp_path)
    trainer = trainer_for(cfg, dirs, tmp_path)
    trainer.train_step()
    random.gauss(0.0, 1.0)  # leaves gauss_next set: half of Python's RNG state that a words-only copy drops
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    assert python_state[2] is not None
    ckpt = trainer.save_checkpoint()
    random.seed(12345)
    torch.manual_seed(12345)

    resumed = trainer_for(cfg, dirs, tmp_path)  # build_trainer seeds both RNGs; resume must bring back the saved ones
    assert resumed.resume() == ckpt
    assert random.getstate() == python_state
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.gauss(0.0, 1.0) == python_state[2]

    # A checkpoint from before (Mersenne Twister words only, no CUDA states) still loads.
    old = tmp_path / "old-checkpoint"
    shutil.copytree(ckpt, old)
    state = torch.load(old / TRAINER_STATE, weights_only=True)
    state["python_rng"] = state["python_rng"]["internal"]
    state.pop("cuda_rng", None)
    torch.save(state, old / TRAINER_STATE)
    resumed._load(old)
    assert random.getstate() == (python_state[0], python_state[1], None)


def test_cuda_rng_states_are_saved_and_restored(dirs, tmp_path, monkeypatch):
    """Without a GPU here: a fake CUDA with one device shows the states go into the checkpoint and come back."""
    trainer = trainer_for(tiny_cfg(tmp_path), dirs, tmp_path)
    cuda_state = torch.arange(16, dtype=torch.uint8)
    restored: dict[int, torch.Tensor] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [cuda_state.clone()])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.__setitem__(device, state))
    ckpt = trainer.save_checkpoint()
    assert torch.equal(torch.load(ckpt / TRAINER_STATE, weights_only=True)["cuda_rng"][0], cuda_state)
    trainer._load(ckpt)
    assert list(restored) == [0] and torch.equal(restored[0], cuda_state)
