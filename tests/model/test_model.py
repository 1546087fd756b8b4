"""Tests of model/bert.py and model/config.py: config validation, forward semantics (sparse
logits, loss, padding invariance, pooling), weight init and tying, and that both LN variants
train. Checkpoint I/O and parity with transformers are in test_model_checkpoint.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.testing import assert_close

import model.bert as bert
from model import (
    BertConfig,
    BertForMaskedLM,
    ConfigError,
    ModelInputError,
    pool,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


def tiny_model(norm_position: str = "post", seed: int = 0, **overrides) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(**{**TINY, "norm_position": norm_position, **overrides}))


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, TINY["vocab_size"], (batch, length), generator=g)


# ------------------------------------------------------------------------------ config


def test_config_defaults_are_bert_base_and_head_size():
    cfg = BertConfig()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (768, 12, 12)
    assert cfg.norm_position == "post"
    assert BertConfig(**TINY).head_size == 8


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hidden_size": 30}, "num_attention_heads"),
        ({"hidden_act": "mish"}, "hidden_act"),
        ({"norm_position": "middle"}, "norm_position"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"vocab_size": 12.5}, "vocab_size"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"pad_token_id": 99}, "pad_token_id"),
        ({"max_position_embeddings": True}, "max_position_embeddings"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        BertConfig(**{**TINY, **overrides})


def test_config_round_trip_and_hf_keys():
    cfg = BertConfig(**TINY, norm_position="pre")
    d = cfg.to_dict()
    assert d["model_type"] == "bert" and d["architectures"] == ["BertForMaskedLM"]
    assert d["norm_position"] == "pre"
    assert BertConfig.from_dict(d) == cfg


def test_config_accepts_a_transformers_config_dict_as_is():
    import transformers

    hf = transformers.BertConfig(**TINY).to_dict()
    hf.update(
        transformers_version="4.40.0",
        torch_dtype="float32",
        gradient_checkpointing=False,
        position_embedding_type="absolute",
        use_cache=True,
        classifier_dropout=None,
    )
    cfg = BertConfig.from_dict(hf)
    assert cfg == BertConfig(**TINY)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("position_embedding_type", "relative_key"),
        ("is_decoder", True),
        ("add_cross_attention", True),
        ("tie_word_embeddings", False),
        ("model_type", "roberta"),
        ("hidden_act", "gelu_10"),
        ("embedding_size", 16),  # ALBERT-style factorised embeddings: unknown key
    ],
)
def test_config_refuses_unsupported_architecture_keys(key, value):
    with pytest.raises(ConfigError, match=key if key != "model_type" else "roberta"):
        BertConfig.from_dict({**TINY, key: value})


def test_rotary_config_is_written_as_roformer_and_read_back():
    config = BertConfig(**TINY, position_embedding_type="rotary")
    d = config.to_dict()
    assert d["model_type"] == "roformer" and d["architectures"] == ["RoFormerForMaskedLM"]
    assert d["embedding_size"] == TINY["hidden_size"] and d["rotary_value"] is False
    assert BertConfig.from_dict(json.loads(json.dumps(d))) == config
    # A transformers RoFormer config without our keys means rotary positions too.
    plain = {k: v for k, v in d.items() if k not in ("position_embedding_type", "norm_position")}
    assert BertConfig.from_dict(plain).position_embedding_type == "rotary"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"rotary_value": True}, "rotary_value"),
        ({"embedding_size": 16}, "embedding_size"),
        ({"model_type": "bert"}, "rotary"),  # transformers would run BERT with absolute positions
    ],
)
def test_rotary_configs_transformers_would_misread_are_refused(changes, match):
    d = {**BertConfig(**TINY, position_embedding_type="rotary").to_dict(), **changes}
    with pytest.raises(ConfigError, match=match):
        BertConfig.from_dict(d)


def test_rotary_positions_need_an_even_head_size():
    with pytest.raises(ConfigError, match="even head size"):
        BertConfig(**{**TINY, "hidden_size": 30, "num_attention_heads": 2},
                   position_embedding_type="rotary")  # fmt: skip


def test_rotary_scores_depend_on_relative_positions_only():
    """RoPE's promise: the score of query q at position i and key k at position j depends on
    i - j alone, so the same pair shifted along the sequence scores the same."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, generator=g)
    T = 40
    rq = bert.apply_rotary(q.expand(1, 1, T, 16).clone())[0, 0]  # (T, hs): q at every position
    rk = bert.apply_rotary(k.expand(1, 1, T, 16).clone())[0, 0]
    scores = rq @ rk.T  # (T, T): q at i, k at j
    for offset in (-7, 0, 3, 20):
        diagonal = torch.diagonal(scores, offset)
        assert_close(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(torch.diagonal(scores, 0)[0], torch.diagonal(scores, 3)[0])
    # Position 0 is not rotated at all.
    assert_close(rq[0], q)


def test_config_json_errors_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json"):
        BertConfig.from_json_file(path)
    with pytest.raises(ConfigError, match="not found"):
        BertConfig.from_json_file(tmp_path / "missing.json")


# ------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_forward_shapes_and_dense_loss_matches_manual_cross_entropy(norm_position):
    model = tiny_model(norm_position).eval()
    ids = random_ids(3, 7)
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[2, 5] = 11, 42
    out = model(ids, labels=labels)
    assert out.logits.shape == (3, 7, 99)
    assert out.last_hidden_state.shape == (3, 7, 32)
    manual = torch.nn.functional.cross_entropy(
        torch.stack([out.logits[0, 2], out.logits[2, 5]]), torch.tensor([11, 42])
    )
    assert_close(out.loss, manual)


def test_sparse_logits_equal_dense_logits_at_the_selected_positions(attention_path):
    model = tiny_model().eval()
    ids = random_ids(3, 9)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    pred = torch.zeros_like(ids, dtype=torch.bool)
    pred[0, 1] = pred[0, 4] = pred[1, 3] = pred[2, 8] = True
    labels = torch.full_like(ids, -100)
    labels[pred] = torch.tensor([7, 8, 9, 10])
    with torch.no_grad():
        dense = model(ids, mask, labels=labels)
        sparse = model(ids, mask, labels=labels, prediction_mask=pred)
    assert sparse.logits.shape == (4, 99)
    assert_close(sparse.logits, dense.logits[pred], atol=1e-5, rtol=1e-5)  # row-major order
    assert_close(sparse.loss, dense.loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_return_hidden_false_prunes_the_last_layer_without_changing_logits_or_loss(
    norm_position, attention_path
):
    model = tiny_model(norm_position).eval()
    ids = random_ids(3, 9, seed=4)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    mask[2, 2:] = 0
    pred = torch.zeros_like(ids, dtype=torch.bool)
    pred[0, 5] = pred[1, 0] = pred[1, 8] = pred[2, 1] = True
    labels = torch.where(pred, ids, torch.full_like(ids, -100))
    with torch.no_grad():
        dense = model(ids, mask, labels=labels)
        fast = model(ids, mask, labels=labels, prediction_mask=pred, return_hidden=False)
    assert fast.last_hidden_state is None
    assert_close(fast.logits, dense.logits[pred], atol=1e-5, rtol=1e-5)
    assert_close(fast.loss, dense.loss, atol=1e-6, rtol=1e-6)
    with pytest.raises(ModelInputError, match="padding"):
        model(ids, mask, prediction_mask=mask.eq(0), return_hidden=False)
    with pytest.raises(ModelInputError, match="prediction_mask"):
        model(ids, mask, return_hidden=False)


def test_sparse_loss_refuses_labels_outside_prediction_mask():
    model = tiny_model().eval()
    ids = random_ids(1, 5)
    labels = torch.full_like(ids, -100)
    labels[0, 1] = 3
    with pytest.raises(ModelInputError, match="prediction_mask"):
        model(ids, labels=labels, prediction_mask=torch.zeros_like(ids, dtype=torch.bool))


@pytest.fixture(params=["per-sequence", "padded+mask"])
def attention_path(request, monkeypatch):
    """Run a test with both attention paths: per sequence (CPU) and padded with a key mask
    (what other devices use), so the GPU code path is exercised on CPU too."""
    if request.param == "padded+mask":
        monkeypatch.setattr(bert, "PER_SEQUENCE_ATTENTION_DEVICES", ())
    return request.param


@pytest.mark.parametrize(
    ("norm_position", "positions"), [("post", "absolute"), ("pre", "absolute"), ("post", "rotary")]
)
def test_outputs_at_real_tokens_do_not_depend_on_padding_or_batch_mates(
    norm_position, positions, attention_path
):
    model = tiny_model(norm_position, position_embedding_type=positions).eval()
    short, long = random_ids(1, 6, seed=2), random_ids(1, 13, seed=3)
    types = torch.tensor([[0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        alone = model(short, token_type_ids=types)
        alone_emb = model.embed(short, token_type_ids=types)
        # Padded to 13 and batched with a longer sequence.
        ids = torch.zeros(2, 13, dtype=torch.long)
        ids[0, :6], ids[1] = short[0], long[0]
        mask = torch.zeros(2, 13, dtype=torch.long)
        mask[0, :6], mask[1] = 1, 1
        tt = torch.zeros_like(ids)
        tt[0, :6] = types[0]
        batched = model(ids, mask, tt)
        batched_emb = model.embed(ids, mask, tt)
        long_alone = model(long)
    assert_close(batched.logits[0, :6], alone.logits[0], atol=1e-5, rtol=1e-5)
    assert_close(batched.last_hidden_state[0, :6], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    assert_close(batched.logits[1], long_alone.logits[0], atol=1e-5, rtol=1e-5)
    assert_close(batched_emb[0], alone_emb[0], atol=1e-5, rtol=1e-5)
    # Padding positions come back as zeros (they are never computed).
    assert torch.count_nonzero(batched.last_hidden_state[0, 6:]) == 0


def test_rows_of_only_padding_give_finite_outputs(attention_path):
    model = tiny_model().eval()
    ids = random_ids(2, 4)
    for mask in (torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]]), torch.zeros(2, 4, dtype=torch.long)):
        with torch.no_grad():
            out = model(ids, mask)
            emb = model.embed(ids, mask)
        assert torch.isfinite(out.logits).all() and torch.isfinite(emb).all()
        assert torch.count_nonzero(out.last_hidden_state[1]) == 0


def test_encode_is_the_encoder_output_of_forward():
    model = tiny_model().eval()
    ids = random_ids(2, 5)
    with torch.no_grad():
        assert_close(model.encode(ids), model(ids).last_hidden_state)


def test_pool_known_answers():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert_close(pool(hidden, mask, "mean"), torch.tensor([[2.0, 2.0]]))
    assert_close(pool(hidden, None, "mean"), torch.tensor([[13 / 3, 13 / 3]]))
    assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0, 1.0]]))
    s = 2**-0.5
    assert_close(pool(hidden, mask, "mean", normalize=True), torch.tensor([[s, s]]))
    # max over the real tokens only (padding must not win even where it is larger).
    assert_close(pool(hidden, mask, "max"), torch.tensor([[3.0, 3.0]]))
    assert_close(pool(-hidden, mask, "max"), torch.tensor([[-1.0, -1.0]]))
    assert_close(pool(hidden, mask, "mean_sqrt_len"), torch.tensor([[4 / 2**0.5, 4 / 2**0.5]]))
    with pytest.raises(ModelInputError, match="median"):
        pool(hidden, mask, "median")


def test_embed_pooling_options():
    model = tiny_model().eval()
    ids = random_ids(2, 6)
    with torch.no_grad():
        hidden = model.encode(ids)
        cls = model.embed(ids, pooling="cls")
        unit = model.embed(ids, normalize=True)
    assert_close(cls, hidden[:, 0])
    assert_close(unit.norm(dim=-1), torch.ones(2))
    with pytest.raises(ModelInputError, match="pooling"):
        model.embed(ids, pooling="median")


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (torch.tensor([[1, 2, 99]]), "vocab_size"),
        (torch.tensor([1, 2, 3]), "batch, length"),
        (torch.ones(1, 65, dtype=torch.long), "max_position_embeddings"),
        (torch.ones(1, 3), "integer"),
    ],
)
def test_bad_inputs_raise_model_input_error(ids, match):
    with pytest.raises(ModelInputError, match=match):
        tiny_model()(ids)


def test_nsp_head_outputs_and_loss():
    model = BertForMaskedLM(BertConfig(**TINY), nsp_head=True).eval()
    ids = random_ids(2, 5)
    out = model(ids, next_sentence_label=torch.tensor([0, 1]))
    assert out.nsp_logits.shape == (2, 2)
    assert_close(out.loss, torch.nn.functional.cross_entropy(out.nsp_logits, torch.tensor([0, 1])))
    with pytest.raises(ModelInputError, match="NSP"):
        tiny_model()(ids, next_sentence_label=torch.tensor([0, 1]))


# ------------------------------------------------------------------------------ init, tying, training


def test_init_and_weight_tying():
    model = tiny_model()
    word = model.embeddings.word.weight
    assert model.mlm_head.decoder.weight is word  # one Parameter, not a copy
    assert sum(p is word for p in model.parameters()) == 1
    assert torch.count_nonzero(word[0]) == 0  # pad row
    w = model.layers[0].ffn.up.weight
    assert 0.015 < w.std().item() < 0.025
    assert torch.count_nonzero(model.layers[0].ffn.up.bias) == 0
    assert_close(model.layers[1].attn_norm.weight, torch.ones(32))


def test_optimizer_param_groups_split_decay_and_cover_every_parameter_once():
    model = tiny_model("pre")
    decay, no_decay = model.optimizer_param_groups(0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.final_norm.weight) in no_decay_ids
    assert id(model.mlm_head.bias) in no_decay_ids
    assert id(model.layers[0].attention.qkv.bias) in no_decay_ids
    assert id(model.layers[0].attention.qkv.weight) not in no_decay_ids
    assert id(model.embeddings.word.weight) not in no_decay_ids


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_both_norm_positions_train_on_a_tiny_batch(norm_position, attention_path):
    model = tiny_model(norm_position).train()
    ids = random_ids(4, 12, seed=5)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    labels[:, 6] = ids[:, 6]
    masked = ids.clone()
    masked[labels.ne(-100)] = 4  # [MASK]
    opt = torch.optim.AdamW(model.optimizer_param_groups(0.01), lr=3e-3)
    losses = []
    for step in range(30):
        # Alternate the full and the pruned (return_hidden=False) training paths.
        out = model(
            masked,
            mask,
            labels=labels,
            prediction_mask=labels.ne(-100),
            return_hidden=step % 2 == 0,
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    # The tie survives optimisation: still one Parameter.
    assert model.mlm_head.decoder.weight is model.embeddings.word.weight


def test_config_is_frozen():
    cfg = BertConfig(**TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 64
