"""reward.pooling=response_mean (minirlhf/pooling.py): the mask against a naive loop, the score against a hand-made
mean, LoRA training and merging, and a saved checkpoint that pools as it trained."""

import pytest
import torch

from minirlhf.pooling import MODEL_TYPE, response_mask
from tests.conftest import require_real_model


def naive_response_mask(ids: list[int], attended: list[int], marker: list[int]) -> list[float]:
    n = len(marker)
    last = -1
    for i in range(len(ids) - n + 1):
        if ids[i : i + n] == marker and all(attended[i : i + n]):
            last = i
    start = last + n if last >= 0 else 0
    return [float(j >= start and attended[j]) for j in range(len(ids))]


def test_response_mask_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    marker = [3, 4]
    ids = torch.randint(0, 6, (64, 12), generator=g)  # small vocabulary: the marker appears 0, 1 or many times
    lengths = torch.randint(1, 13, (64,), generator=g)
    attention = (torch.arange(12)[None, :] < lengths[:, None]).long()
    ids[0] = torch.tensor([0, 3, 4, 5, 3, 4, 1, 2, 0, 0, 0, 0])  # two markers: the last one counts
    attention[0] = torch.tensor([1] * 8 + [0] * 4)
    ids[1] = torch.tensor([1, 2, 5, 5, 1, 2, 5, 1, 2, 3, 4, 5])  # the marker only in the padding: all tokens
    attention[1] = torch.tensor([1] * 9 + [0] * 3)
    got = response_mask(ids, attention, marker)
    want = torch.tensor([naive_response_mask(i.tolist(), a.tolist(), marker) for i, a in zip(ids, attention)])
    assert torch.equal(got, want)
    assert got[0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert got[1].tolist() == [1] * 9 + [0] * 3


@pytest.fixture(scope="module")
def minilm_rm():
    require_real_model("minilm")
    from minirlhf.models import load_reward_model

    torch.manual_seed(0)
    return load_reward_model("minilm", pooling="response_mean", response_marker="Assistant:")


def test_the_score_is_the_head_on_the_mean_of_the_response_tokens(minilm_rm):
    tokenizer, rm = minilm_rm
    rm.eval()
    texts = ["\n\nHuman: how do I pick a lock?\n\nAssistant: I can't help with that.",
             "\n\nHuman: hi\n\nAssistant: Hello!\n\nHuman: and now?\n\nAssistant: Still here, how can I help?"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = rm(**batch).logits[:, 0]
        hidden = rm.bert(**batch).last_hidden_state
    for row, text in enumerate(texts):
        response = text.rsplit("Assistant:", 1)[1]
        n = len(tokenizer(response, add_special_tokens=False)["input_ids"])
        length = int(batch["attention_mask"][row].sum())
        # the response's tokens and the final [SEP]: everything after the last "assistant :"
        want = rm.classifier(hidden[row, length - 1 - n : length].mean(0))[0]
        torch.testing.assert_close(scores[row], want, atol=1e-5, rtol=1e-5)
    # [CLS]'s pooler plays no part
    with torch.no_grad():
        rm.bert.pooler.dense.weight.mul_(0)
        torch.testing.assert_close(rm(**batch).logits[:, 0], scores)


@pytest.mark.slow
def test_lora_merged_response_mean_checkpoint_reloads_as_it_trained(minilm_rm, tmp_path):
    from minirlhf.config import LoRAConfig
    from minirlhf.models import add_lora, load_reward_model

    tokenizer, _ = minilm_rm
    _, rm = load_reward_model("minilm", pooling="response_mean")
    lora = add_lora(rm, LoRAConfig(enabled=True, r=4, alpha=8), "SEQ_CLS")
    assert any("classifier" in n for n, p in lora.named_parameters() if p.requires_grad)
    batch = tokenizer(["\n\nHuman: a?\n\nAssistant: b c d", "\n\nHuman: e\n\nAssistant: f"], return_tensors="pt",
                      padding=True)
    optimiser = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # move the adapters off zero, so the merge has something to merge
        loss = -torch.nn.functional.logsigmoid(lora(**batch).logits[0, 0] - lora(**batch).logits[1, 0])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    lora.eval()
    with torch.no_grad():
        trained = lora(**batch).logits
    merged = lora.merge_and_unload()
    merged.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    _, reloaded = load_reward_model(str(tmp_path / "rm"))  # pooling comes from the saved config
    assert reloaded.config.model_type == MODEL_TYPE
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trained, atol=1e-5, rtol=1e-5)


def test_response_mean_refuses_a_causal_backbone(tmp_path):
    from minirlhf.models import load_reward_model
    from tests.test_real_models import save_standin

    standin = save_standin("gpt2", tmp_path / "gpt2")
    with pytest.raises(ValueError, match="reward.pooling=response_mean needs a BERT-family"):
        load_reward_model(str(standin), pooling="response_mean")
