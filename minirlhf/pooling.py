"""A BERT-family reward model that reads its score from the mean of the response's tokens, not from [CLS].

Usage:
    from minirlhf.models import load_reward_model
    tokenizer, rm = load_reward_model("minilm", pooling="response_mean", response_marker="Assistant:")
    rm(**tokenizer([prompt + response], return_tensors="pt")).logits   # (batch, 1)

Why: all-MiniLM-L6-v2 was trained as a sentence encoder with *mean* pooling, and its [CLS] pooler never learned to
summarise a dialogue; and a chosen and a rejected answer share their whole prompt, so a score pooled over the
response alone compares what differs. On the shared HH-RLHF rows (2026-12-05), a logistic regression on the
frozen encoder's features reached 0.612 held-out accuracy from the [CLS] pooler, 0.629 from the mean of all tokens
and 0.662 from the mean of the response's tokens.

The response is found in the token ids alone (TRL's RewardTrainer passes nothing else): the tokens after the last
occurrence of the marker's ids (HH-RLHF's "Assistant:"), to the end of the text. A text without the marker is
pooled over all its tokens. The marker's ids live in the saved config, so a loaded checkpoint pools as it trained.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "minirlhf-bert-response-mean"


def response_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, marker_ids: list[int]) -> torch.Tensor:
    """1 on the tokens after the last occurrence of `marker_ids` in each row (to its last attended token), else 0;
    a row without the marker is all of its attended tokens. (batch, seq) float."""
    batch, seq = input_ids.shape
    n = len(marker_ids)
    attended = attention_mask.bool()
    if n == 0 or seq < n:
        return attended.float()
    marker = torch.tensor(marker_ids, device=input_ids.device)
    windows = input_ids.unfold(1, n, 1)  # (batch, seq - n + 1, n)
    hits = (windows == marker).all(-1) & attended[:, n - 1:]  # a hit at i: the marker spans i .. i + n - 1
    positions = torch.arange(seq - n + 1, device=input_ids.device)
    last = torch.where(hits, positions, torch.full_like(positions, -1)).amax(1)  # (batch,) -1: no marker
    start = torch.where(last >= 0, last + n, torch.zeros_like(last))  # first response token
    after = torch.arange(seq, device=input_ids.device)[None, :] >= start[:, None]
    return (after & attended).float()


class BertResponseMeanConfig(BertConfig):
    model_type = MODEL_TYPE

    def __init__(self, response_marker_ids: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.response_marker_ids = list(response_marker_ids or [])


class BertResponseMeanForSequenceClassification(BertForSequenceClassification):
    """BertForSequenceClassification with the [CLS] pooler replaced by the response's mean hidden state."""

    config_class = BertResponseMeanConfig

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        output_hidden_states=output_hidden_states)
        mask = response_mask(input_ids, attention_mask, self.config.response_marker_ids)  # (batch, seq)
        hidden = out.last_hidden_state  # (batch, seq, width)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (batch, width)
        logits = self.classifier(self.dropout(pooled))  # (batch, 1)
        return SequenceClassifierOutput(logits=logits, hidden_states=out.hidden_states)


# Registered on import, so `AutoModelForSequenceClassification.from_pretrained(saved_dir)` rebuilds this class.
AutoConfig.register(MODEL_TYPE, BertResponseMeanConfig)
AutoModelForSequenceClassification.register(BertResponseMeanConfig, BertResponseMeanForSequenceClassification)


def load_response_mean(source: str, marker_ids: list[int], **kwargs) -> BertResponseMeanForSequenceClassification:
    """A BERT-family checkpoint (an encoder or a saved response-mean reward model) as a response-mean reward model."""
    base = AutoConfig.from_pretrained(source)
    if base.model_type not in ("bert", MODEL_TYPE):
        raise ValueError(f"reward.pooling=response_mean needs a BERT-family reward backbone (e.g. 'minilm'); "
                         f"{source} is a {base.model_type!r} model: use reward.pooling=default for it")
    fields = {k: v for k, v in base.to_dict().items() if k not in ("model_type", "id2label", "label2id")}
    config = BertResponseMeanConfig(**(fields | {"num_labels": 1, "response_marker_ids": marker_ids}))
    return BertResponseMeanForSequenceClassification.from_pretrained(source, config=config, **kwargs)
