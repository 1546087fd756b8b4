"""A model that learns to use word order: the regression test for the bag-of-words plateau.

Synthetic corpus: even positions hold random "head" tokens, each odd position the fixed partner
of the head just before it (`partner = head + H`). A masked partner is given away by its left
neighbour and a masked head by its right one; a model that ignores order (a bag of words: sums
of embeddings, uniform attention) can only guess among the sequence's ~5 masked tokens. A tiny
BERT with rotary positions trained 200 steps with the shipped recipe's optimiser settings must
get most masks right; with the order taken away (position information removed) it must not,
which shows the test can fail. Learned absolute positions need seven times the steps (the slow
test), which is the plateau of issue 12 in miniature.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import BertConfig, BertForMaskedLM
from training.data.masking import MaskingSpec, mask_batch

HEADS = 48  # head tokens; partners are HEADS more; 5 specials in front
SPECIALS = 5
SEQ = 32
STEPS = 200


def synthetic_batch(rng: np.random.Generator, batch: int) -> np.ndarray:
    heads = rng.integers(0, HEADS, size=(batch, SEQ // 2))
    ids = np.empty((batch, SEQ), dtype=np.int64)
    ids[:, 0::2] = SPECIALS + heads
    ids[:, 1::2] = SPECIALS + HEADS + heads
    return ids


def spec() -> MaskingSpec:
    vocab = {f"[S{i}]": i for i in range(SPECIALS)}
    vocab.update({f"t{i}": SPECIALS + i for i in range(2 * HEADS)})
    return MaskingSpec.from_vocab(vocab, range(SPECIALS), mask_token_id=4)


def train_and_score(
    position_embedding_type: str, *, orderless: bool = False, steps: int = STEPS
) -> float:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = BertConfig(
        vocab_size=SPECIALS + 2 * HEADS,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=SEQ,
        position_embedding_type=position_embedding_type,
    )
    model = BertForMaskedLM(config)
    if orderless:  # a bag of words: no position table, nothing rotated
        model.embeddings.position = None
        for layer in model.layers:
            layer.attention.rotary = False
    opt = torch.optim.AdamW(model.optimizer_param_groups(0.01), lr=2e-3, betas=(0.9, 0.98))
    s = spec()
    model.train()
    for step in range(steps):
        inp, labels = mask_batch(synthetic_batch(rng, 32), s, rng)
        inp_t, labels_t = torch.from_numpy(inp), torch.from_numpy(labels)
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 30)
        loss = model(inp_t, labels=labels_t, prediction_mask=labels_t.ne(-100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    inp, labels = mask_batch(synthetic_batch(np.random.default_rng(1), 256), s, rng)
    inp_t, labels_t = torch.from_numpy(inp), torch.from_numpy(labels)
    with torch.no_grad():
        logits = model(inp_t, prediction_mask=labels_t.ne(-100)).logits
    return float((logits.argmax(-1) == labels_t[labels_t.ne(-100)]).float().mean())


def test_rotary_model_learns_from_neighbours(one_torch_thread):
    accuracy = train_and_score("rotary")
    # A neighbour is itself masked ~15% of the time (then the token is a 1-in-48 guess), so the
    # ceiling is ~0.86; a bag of words stays near 0.1-0.2 (see below). Measured: 0.861.
    assert accuracy > 0.7, f"rotary: masked-token accuracy {accuracy:.3f}"


@pytest.mark.slow
def test_learned_absolute_positions_learn_it_too_but_slowly(one_torch_thread):
    """The plateau of issue 12 in miniature: at 200 steps learned absolute positions are still
    a bag of words (measured 0.12); they get there by 1,500 (measured 0.88)."""
    assert train_and_score("absolute", steps=200) < 0.35
    assert train_and_score("absolute", steps=1500) > 0.7


@pytest.mark.slow  # the control arm (~8 s); make test keeps the rotary model's test
def test_bag_of_words_fails(one_torch_thread):
    accuracy = train_and_score("absolute", orderless=True)
    assert accuracy < 0.35, f"an orderless model reached {accuracy:.3f}: the task leaks order"
