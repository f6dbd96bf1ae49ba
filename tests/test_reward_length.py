"""The length-debiased reward objective (reward.length_corr_coef, minirlhf/reward.py): the correlation against
numpy (fast), the trainer's loss against TRL's plus the term on a real batch of a tiny GPT-2 reward model (fast),
and a training run whose margins lean on length less than the plain loss's (slow)."""

import numpy as np
import pytest
import torch
from trl import RewardTrainer

from minirlhf.config import PipelineConfig, TinyModelConfig
from minirlhf.models import build_tiny, load_reward_model
from minirlhf.reward import LengthDebiasedRewardTrainer, length_correlation, reward_trainer
from minirlhf.scoring import score_texts
from minirlhf.stage import NullLogger

WORDS = "the a cat dog sat ran on under mat rug red blue big small very quite".split()
CORPUS = [" ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(10)) for i in range(40)]


def test_length_correlation_is_the_absolute_pearson_correlation():
    g = torch.Generator().manual_seed(0)
    margins, lengths = torch.randn(16, generator=g), torch.randint(-20, 20, (16,), generator=g)
    want = abs(np.corrcoef(margins.numpy(), lengths.numpy())[0, 1])
    assert float(length_correlation(margins, lengths)) == pytest.approx(want, abs=1e-6)
    assert float(length_correlation(-margins, lengths)) == pytest.approx(want, abs=1e-6)  # either sign is penalised
    assert float(length_correlation(margins, torch.zeros(16))) == 0  # equal lengths: nothing to decorrelate
    assert float(length_correlation(2 * lengths.float() + 1, lengths)) == pytest.approx(1.0, abs=1e-6)


def length_pairs(n: int) -> list[dict]:
    """Pairs whose chosen reply is sometimes the longer, sometimes the shorter one."""
    return [{"prompt": f"\n\nHuman: {CORPUS[i % len(CORPUS)]}\n\nAssistant:",
             "chosen": " " + " ".join(WORDS[: 2 + i % 7]), "rejected": " " + " ".join(WORDS[3 : 4 + (i * 3) % 9])}
            for i in range(n)]


@pytest.fixture
def tiny_reward_model(tmp_path):
    tokenizer, lm = build_tiny(TinyModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=256, vocab_size=300),
                               CORPUS)
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    torch.manual_seed(0)
    return load_reward_model(str(tmp_path / "lm"))


def test_the_debiased_trainer_adds_the_correlation_term_to_trls_loss(tiny_reward_model, tmp_path):
    tokenizer, model = tiny_reward_model
    cfg = PipelineConfig.model_validate({"reward": {"length_corr_coef": 2.0, "batch_size": 8, "max_length": 64}})
    trainer = reward_trainer(cfg, model, tokenizer, length_pairs(8), tmp_path / "out", 0, NullLogger(), [])
    assert type(trainer) is LengthDebiasedRewardTrainer
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        debiased, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
        plain = RewardTrainer.compute_loss(trainer, trainer.model, dict(batch))
    scores = outputs.logits[:, 0].numpy()
    lengths = batch["attention_mask"].sum(1).numpy()  # (2n,): chosen rows, then rejected rows
    n = len(scores) // 2
    corr = abs(np.corrcoef(scores[:n] - scores[n:], lengths[:n] - lengths[n:])[0, 1])
    assert corr > 0.05  # the term is not trivially zero on this batch
    assert float(debiased - plain) == pytest.approx(2.0 * corr, abs=1e-5)
    plain_cfg = PipelineConfig.model_validate({"reward": {"batch_size": 8, "max_length": 64}})
    assert type(reward_trainer(plain_cfg, model, tokenizer, length_pairs(8), tmp_path / "o2", 0, NullLogger(),
                               [])) is RewardTrainer


@pytest.mark.slow
def test_training_with_the_term_leans_less_on_length(tiny_reward_model, tmp_path):
    """Labels that are pure length (the longer reply is chosen): the plain loss learns length; with the term the
    margins' correlation with the length difference falls."""
    tokenizer, _ = tiny_reward_model
    pairs = []
    for row in length_pairs(64):
        longer, shorter = sorted((row["chosen"], row["rejected"]), key=len, reverse=True)
        pairs.append({"prompt": row["prompt"], "chosen": longer, "rejected": shorter})

    def margin_length_corr(coef: float) -> float:
        torch.manual_seed(0)
        _, model = load_reward_model(str(tmp_path / "lm"))
        cfg = PipelineConfig.model_validate({"reward": {"length_corr_coef": coef, "batch_size": 16, "max_length": 64,
                                                        "num_train_epochs": 4, "learning_rate": 3e-3}})
        trainer = reward_trainer(cfg, model, tokenizer, pairs, tmp_path / f"out{coef}", 0, NullLogger(), [])
        trainer.train()
        margins = (score_texts(model, tokenizer, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
                   - score_texts(model, tokenizer, [p["prompt"] for p in pairs], [p["rejected"] for p in pairs]))
        length_diffs = torch.tensor([len(p["chosen"].split()) - len(p["rejected"].split()) for p in pairs])
        return float(length_correlation(margins, length_diffs))

    plain, debiased = margin_length_corr(0.0), margin_length_corr(5.0)
    assert plain > 0.5 and debiased < plain - 0.2, (plain, debiased)  # 0.725 and 0.039 (2026-12-06)
