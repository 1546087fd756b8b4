"""Tests of model/checkpoint.py and model/convert.py: parity with transformers in both directions,
HF directory variants (.bin, gamma/beta, tied weights stored once or twice, NSP head), rejection
of bad checkpoints with the tensor or field named, atomic saves and the bert-convert CLI."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

import model.bert as bert
import model.checkpoint as checkpoint
import model.weights as weights
from model import BertConfig, BertForMaskedLM, CheckpointError, ConfigError
from model.convert import main as convert_main

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
TOL = dict(atol=1e-5, rtol=1e-5)


def hf_model(seed: int = 0, cls=transformers.BertForMaskedLM):
    torch.manual_seed(seed)
    return cls(transformers.BertConfig(**TINY)).eval()


def batch(padded: bool):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, TINY["vocab_size"], (3, 11), generator=g)
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 7:] = 0
        mask[2, 3:] = 0
        ids[mask == 0] = 0
    return ids, mask, types


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A randomly initialised transformers BertForMaskedLM saved with save_pretrained."""
    path = tmp_path_factory.mktemp("hf")
    hf_model().save_pretrained(path)
    return path


def write_checkpoint(path, state, config: dict):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    return path


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize(("padded", "per_sequence"), [(False, True), (True, True), (True, False)])
def test_hf_checkpoint_loads_with_identical_outputs(hf_dir, padded, per_sequence, monkeypatch):
    if not per_sequence:  # the padded + key-mask attention that GPUs use
        monkeypatch.setattr(bert, "PER_SEQUENCE_ATTENTION_DEVICES", ())
    hf = transformers.BertForMaskedLM.from_pretrained(hf_dir).eval()
    ours = BertForMaskedLM.from_pretrained(hf_dir)
    ids, mask, types = batch(padded)
    with torch.no_grad():
        ref = hf(
            input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True
        )
        out = ours(ids, mask, types)
        emb = ours.embed(ids, mask, types, pooling="mean")
    real = mask.bool()
    assert_close(out.logits[real], ref.logits[real], **TOL)
    assert_close(out.last_hidden_state[real], ref.hidden_states[-1][real], **TOL)
    assert_close(emb, mean_pool(ref.hidden_states[-1], mask), **TOL)


def test_our_checkpoint_loads_in_transformers_with_identical_logits(tmp_path):
    torch.manual_seed(3)
    ours = BertForMaskedLM(BertConfig(**TINY)).eval()
    ours.save_pretrained(tmp_path)
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask, types = batch(padded=True)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        out = ours(ids, mask, types).logits
    assert_close(out[mask.bool()], ref[mask.bool()], **TOL)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForMaskedLM"]
    assert config["norm_position"] == "post"
    # HF names; q/k/v stored separately; tied decoder stored once, as the word embedding.
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert keys == set(weights.to_hf_state_dict(BertForMaskedLM(BertConfig(**TINY))))
    assert "bert.encoder.layer.1.attention.self.key.weight" in keys
    assert "cls.predictions.decoder.weight" not in keys


@pytest.mark.parametrize("padded", [False, True])
def test_rotary_checkpoint_is_a_roformer_directory_both_ways(tmp_path, padded):
    """Rotary positions are written as transformers' RoFormerForMaskedLM: it opens our directory
    with equal outputs, and we open a RoFormer directory saved by transformers."""
    torch.manual_seed(4)
    ours = BertForMaskedLM(BertConfig(**TINY, position_embedding_type="rotary")).eval()
    with torch.no_grad():  # wider than BERT's init, so attention is far from uniform
        for p in ours.parameters():
            p.normal_(0.0, 0.3)
    ours.save_pretrained(tmp_path / "ours")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    assert type(hf).__name__ == "RoFormerForMaskedLM"
    ids, mask, types = batch(padded)
    real = mask.bool()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        out = ours(ids, mask, types)
    assert_close(out.logits[real], ref.logits[real], **TOL)

    hf.save_pretrained(tmp_path / "theirs")
    back = BertForMaskedLM.from_pretrained(tmp_path / "theirs")
    assert back.config.position_embedding_type == "rotary"
    with torch.no_grad():
        assert_close(back(ids, mask, types).logits[real], ref.logits[real], **TOL)
    keys = set(load_file(str(tmp_path / "ours" / "model.safetensors")))
    assert "roformer.encoder.layer.0.attention.self.query.weight" in keys
    assert not any(k.startswith("bert.") for k in keys)


def test_checkpoint_dir_with_our_tokenizer_loads_in_transformers(tmp_path, small_vocab_dir):
    """The full contract: model.save_pretrained + tokenizer.save_pretrained into one directory
    gives a directory transformers reads (tokenizer and model) with identical results."""
    from tokenization import WordPieceTokenizer

    tok = WordPieceTokenizer.from_pretrained(small_vocab_dir)
    torch.manual_seed(6)
    ours = BertForMaskedLM(BertConfig(**{**TINY, "vocab_size": tok.vocab_size})).eval()
    ours.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    hf_tok = transformers.BertTokenizerFast.from_pretrained(tmp_path)
    assert len(hf_tok) == tok.vocab_size  # transformers 5 can silently ignore a vocab
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    texts = ["The cat sat on the [MASK].", "A noun: a word that names [MASK] thing or person."]
    enc = tok.encode_batch(texts, padding="longest")
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    hf_enc = hf_tok(texts, padding="longest", return_tensors="pt")
    assert torch.equal(hf_enc["input_ids"], ids)
    pred = ids == tok.mask_token_id
    assert int(pred.sum()) == 2
    with torch.no_grad():
        ref = hf(**hf_enc).logits[pred]
        out = ours(ids, mask, prediction_mask=pred).logits
    assert_close(out, ref, **TOL)


def test_pytorch_model_bin_with_tied_weights_stored_twice_loads(tmp_path):
    hf = hf_model(seed=1)
    state = hf.state_dict()  # includes cls.predictions.decoder.weight/bias (tied copies)
    assert "cls.predictions.decoder.weight" in state
    torch.save({k: v.clone() for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    ours = BertForMaskedLM.from_pretrained(tmp_path)
    ids, mask, types = batch(padded=True)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        out = ours(ids, mask, types).logits
    assert_close(out[mask.bool()], ref[mask.bool()], **TOL)
    assert ours.mlm_head.decoder.weight is ours.embeddings.word.weight


def test_sharded_hf_checkpoint_loads(tmp_path):
    hf = hf_model(seed=8)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = BertForMaskedLM.from_pretrained(tmp_path)
    ids, mask, types = batch(padded=False)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types).logits
        assert_close(ours(ids, mask, types).logits, ref, **TOL)


def test_old_gamma_beta_names_and_extra_heads_are_accepted(tmp_path):
    hf = hf_model(seed=2, cls=transformers.BertForPreTraining)  # with pooler and NSP head
    state = {}
    for k, v in hf.state_dict().items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        )
        state[k] = v.clone()
    state["bert.embeddings.position_ids"] = torch.arange(64)[None].float()
    torch.save(state, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    ids, mask, types = batch(padded=True)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        plain = BertForMaskedLM.from_pretrained(tmp_path)  # pooler / NSP ignored
        assert plain.nsp_head is None
        with_nsp = BertForMaskedLM.from_pretrained(tmp_path, nsp_head=True)
        out = with_nsp(ids, mask, types)
    assert_close(out.logits[mask.bool()], ref.prediction_logits[mask.bool()], **TOL)
    assert_close(out.nsp_logits, ref.seq_relationship_logits, **TOL)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_save_load_round_trip_keeps_outputs_tying_and_trainability(tmp_path, norm_position):
    torch.manual_seed(4)
    model = BertForMaskedLM(BertConfig(**TINY, norm_position=norm_position)).eval()
    model.save_pretrained(tmp_path)
    loaded = BertForMaskedLM.from_pretrained(tmp_path)
    assert not loaded.training
    ids, mask, types = batch(padded=True)
    with torch.no_grad():
        assert_close(loaded(ids, mask, types).logits, model(ids, mask, types).logits)
    word = loaded.embeddings.word.weight
    assert loaded.mlm_head.decoder.weight is word and word.requires_grad
    assert sum(p is word for p in loaded.parameters()) == 1
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert ("bert.encoder.LayerNorm.weight" in keys) == (norm_position == "pre")
    # A gradient step on the loaded model moves the (single) tied weight.
    loaded.train()
    loaded(ids, mask, types, labels=ids).loss.backward()
    assert word.grad is not None and loaded.mlm_head.decoder.weight.grad is word.grad


def test_from_pretrained_dtype(tmp_path):
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**TINY)).save_pretrained(tmp_path)
    assert BertForMaskedLM.from_pretrained(tmp_path).dtype == torch.float32
    half = BertForMaskedLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.mlm_head.bias.dtype == torch.bfloat16


# ------------------------------------------------------------------------------ rejection


@pytest.fixture
def good_state():
    return {k: v.clone() for k, v in hf_model().state_dict().items()}


def test_nan_weight_is_rejected_naming_the_tensor(tmp_path, good_state):
    good_state["bert.encoder.layer.1.output.dense.weight"][0, 0] = float("nan")
    write_checkpoint(tmp_path, good_state, TINY)
    with pytest.raises(CheckpointError, match=r"layer\.1\.output\.dense\.weight.*NaN"):
        BertForMaskedLM.from_pretrained(tmp_path)


def test_wrong_shape_is_rejected_naming_the_tensor(tmp_path, good_state):
    good_state["bert.encoder.layer.0.attention.self.key.weight"] = torch.zeros(32, 31)
    write_checkpoint(tmp_path, good_state, TINY)
    with pytest.raises(CheckpointError, match=r"attention\.self\.key\.weight has shape"):
        BertForMaskedLM.from_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_reported(tmp_path, good_state):
    del good_state["cls.predictions.transform.dense.bias"]
    good_state["bert.encoder.layer.0.surprise"] = torch.zeros(3)
    write_checkpoint(tmp_path, good_state, TINY)
    with pytest.raises(CheckpointError) as e:
        BertForMaskedLM.from_pretrained(tmp_path)
    assert "missing tensors: cls.predictions.transform.dense.bias" in str(e.value)
    assert "unexpected tensors: bert.encoder.layer.0.surprise" in str(e.value)


def test_tied_decoder_stored_with_different_values_is_rejected(tmp_path, good_state):
    good_state["cls.predictions.decoder.weight"] = (
        good_state["bert.embeddings.word_embeddings.weight"] + 1
    )
    write_checkpoint(tmp_path, good_state, TINY)
    with pytest.raises(CheckpointError, match=r"decoder\.weight differs"):
        BertForMaskedLM.from_pretrained(tmp_path)


def test_truncated_safetensors_file_is_rejected(tmp_path, hf_dir):
    data = (hf_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        BertForMaskedLM.from_pretrained(tmp_path)


def test_truncated_pytorch_bin_is_rejected(tmp_path, good_state):
    torch.save(good_state, tmp_path / "full.bin")
    data = (tmp_path / "full.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin"):
        BertForMaskedLM.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"hidden_size": 64}, CheckpointError, r"word_embeddings\.weight has shape \(99, 32\)"),
        ({"num_hidden_layers": 3}, CheckpointError, r"missing tensors: bert\.encoder\.layer\.2\."),
        ({"num_hidden_layers": 1}, CheckpointError, r"unexpected tensors: bert\.encoder\.layer\.1"),
        ({"vocab_size": 100}, CheckpointError, r"word_embeddings\.weight"),
        ({"position_embedding_type": "relative_key"}, ConfigError, "position_embedding_type"),
        ({"is_decoder": True}, ConfigError, "is_decoder"),
        ({"hidden_act": "gelu_10"}, ConfigError, "hidden_act"),
        ({"hidden_size": 30}, ConfigError, "hidden_size"),
    ],
)
def test_config_that_does_not_match_the_weights_is_rejected(
    tmp_path, good_state, change, error, match
):
    write_checkpoint(tmp_path, good_state, {**TINY, **change})
    with pytest.raises(error, match=match):
        BertForMaskedLM.from_pretrained(tmp_path)


def test_missing_directory_or_weights(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        BertForMaskedLM.from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(CheckpointError, match="no weights file"):
        BertForMaskedLM.from_pretrained(tmp_path)


def test_save_refuses_nan_weights(tmp_path):
    model = BertForMaskedLM(BertConfig(**TINY))
    with torch.no_grad():
        model.mlm_head.bias[3] = float("inf")
    with pytest.raises(CheckpointError, match=r"cls\.predictions\.bias"):
        model.save_pretrained(tmp_path)
    assert not list(tmp_path.iterdir())


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    torch.manual_seed(0)
    old = BertForMaskedLM(BertConfig(**TINY))
    old.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_written(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", half_written)
    torch.manual_seed(1)
    new = BertForMaskedLM(BertConfig(**{**TINY, "num_hidden_layers": 1}))
    with pytest.raises(CheckpointError, match="disk full"):
        new.save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left
    monkeypatch.undo()
    loaded = BertForMaskedLM.from_pretrained(tmp_path)
    assert_close(loaded.embeddings.word.weight, old.embeddings.word.weight)


# ------------------------------------------------------------------------------ bert-convert CLI


def test_convert_from_hf_bin_dir_writes_our_dir(tmp_path, capsys):
    src, out = tmp_path / "hf", tmp_path / "ours"
    src.mkdir()
    hf = hf_model(seed=5)
    torch.save(hf.state_dict(), src / "pytorch_model.bin")
    hf.config.to_json_file(src / "config.json")
    (src / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(99)) + "\n")
    assert convert_main(["--from-hf", str(src), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer_config.json",
    }
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True
    assert "converted" in capsys.readouterr().out
    ids, mask, types = batch(padded=True)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = BertForMaskedLM.from_pretrained(out)(ids, mask, types).logits
    assert_close(got[mask.bool()], ref[mask.bool()], **TOL)


def test_convert_to_hf_validates_post_ln_and_refuses_pre_ln(tmp_path, capsys):
    post, pre = tmp_path / "post", tmp_path / "pre"
    BertForMaskedLM(BertConfig(**TINY)).save_pretrained(post)
    BertForMaskedLM(BertConfig(**TINY, norm_position="pre")).save_pretrained(pre)
    assert convert_main(["--to-hf", str(post)]) == 0
    assert "already is a HuggingFace" in capsys.readouterr().out
    assert convert_main(["--to-hf", str(post), "--out", str(tmp_path / "copy")]) == 0
    assert transformers.BertForMaskedLM.from_pretrained(tmp_path / "copy") is not None
    assert convert_main(["--to-hf", str(pre)]) == 1
    err = capsys.readouterr().err
    assert "pre-LN" in err and "Traceback" not in err
    assert convert_main(["--check", str(pre)]) == 0
    assert "pre-LN" in capsys.readouterr().out


def test_convert_check_reports_user_errors_without_traceback(tmp_path, capsys, good_state):
    assert convert_main(["--check", str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err
    good_state["bert.embeddings.LayerNorm.bias"][0] = float("inf")
    write_checkpoint(tmp_path / "bad", good_state, TINY)
    assert convert_main(["--check", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bert-convert: error:") and "bert.embeddings.LayerNorm.bias" in err
    good = tmp_path / "good"
    BertForMaskedLM(BertConfig(**TINY)).save_pretrained(good)
    (good / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(120)))
    assert convert_main(["--check", str(good)]) == 1
    assert "120 tokens" in capsys.readouterr().err
