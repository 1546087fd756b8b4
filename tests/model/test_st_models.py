"""sentence-transformers' CrossEncoder, SparseEncoder and prompts through the one loader: what
`Capabilities` says of each directory, and outputs equal to the library's own (`predict`,
`encode`) computed with our tokenizer and model, on tiny random models the libraries save
themselves (offline). Also `splade` against transformers' MLM logits, and the refusals."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from model import (
    BertForMaskedLM,
    Capabilities,
    CheckpointError,
    activate_scores,
    load_checkpoint,
    splade,
)
from model.heads import top_k_dims
from tokenization import WordPieceTokenizer

transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")
if not hasattr(sentence_transformers, "SparseEncoder"):  # added in sentence-transformers 5
    pytest.skip("sentence-transformers without SparseEncoder", allow_module_level=True)

from hf_testing import SIZES, hf_bert_dir, hf_tokenizer, offline, st_dir, vocabulary  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAIRS = [
    ("what is a cat", "a cat is a small animal that likes to sleep in the sun"),
    ("how do rivers form", "water runs downhill and cuts a channel"),
    ("the", "a very long passage " + "about nothing in particular " * 8),
    ("who wrote it", ""),
]
TEXTS = ["a cat sat on the mat", "rivers run to the sea", "the", "[MASK] is here"]
TOL = dict(atol=1e-5, rtol=1e-5)


def _load(directory: Path):
    return load_checkpoint(
        directory, BertForMaskedLM, tokenizer_factory=WordPieceTokenizer.from_pretrained
    )


def _classifier_dir(directory: Path, num_labels: int) -> Path:
    """transformers' BertForSequenceClassification (weights drawn wide) and its tokenizer."""
    config = transformers.BertConfig(vocab_size=1500, num_labels=num_labels, **SIZES)
    torch.manual_seed(num_labels)
    model = transformers.BertForSequenceClassification(config).eval()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 1.0 if "token_type" in name else 0.3  # segments must matter
            p.copy_(torch.randn(p.shape, generator=g) * (std if p.dim() > 1 else 0.1))
    model.save_pretrained(directory)
    hf_tokenizer(vocabulary(1500)).save_pretrained(directory)
    return directory


def _pair_scores(loaded, pairs, apply_softmax: bool = False) -> torch.Tensor:
    """CrossEncoder.predict, done as a server would: our tokenizer (longest_first at
    max_tokens), classify with token types, then the activation the capabilities name."""
    caps, tok = loaded.capabilities, loaded.tokenizer
    encs = tok.encode_batch(
        [a for a, _ in pairs],
        [b for _, b in pairs],
        truncation="longest_first",
        max_length=caps.max_tokens,
    )
    ids, mask, types = (
        torch.tensor([getattr(e, k) for e in encs]) for k in ("ids", "attention_mask", "type_ids")
    )
    with torch.no_grad():
        logits = loaded.model.classify(ids, mask, types).logits  # (B, C)
    return activate_scores(logits, caps.score_activation, apply_softmax)


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    offline()
    root = tmp_path_factory.mktemp("st")
    return {
        "reranker": _classifier_dir(root / "reranker", 1),
        "two": _classifier_dir(root / "two", 2),  # transformers 5 writes no id2label for it
        "three": _classifier_dir(root / "three", 3),
        "mlm": hf_bert_dir(root / "mlm", vocab_size=1500),
        "encoder": hf_bert_dir(root / "encoder", head="BertModel", vocab_size=1500),
    }


# -- CrossEncoder ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")
@pytest.mark.parametrize(
    ("base", "activation_fn", "expected"),
    [
        ("reranker", None, "sigmoid"),  # CrossEncoder's default for one label
        ("reranker", torch.nn.Identity(), "identity"),
        ("two", None, "identity"),  # ... and for more
        ("three", None, "identity"),
        ("three", torch.nn.Softmax(), "softmax"),
    ],
)
def test_cross_encoder_directories_score_as_predict(tmp_path, dirs, base, activation_fn, expected):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(dirs[base]), device="cpu", max_length=24, activation_fn=activation_fn)
    ce.save(str(tmp_path / "ce"))
    loaded = _load(tmp_path / "ce")
    caps = loaded.capabilities
    assert (caps.cross_encoder, caps.sentence_transformers) == (True, True)
    assert caps.score_activation == expected and caps.rerank == (base == "reranker")
    assert caps.max_tokens == 24 and caps.prompts == {} and caps.default_prompt_name is None
    # The pairs are cut to 24 tokens, longest first, as predict cuts them.
    reference = CrossEncoder(str(tmp_path / "ce"), device="cpu")
    for softmax in (False, True):
        expected_scores = reference.predict(PAIRS, convert_to_tensor=True, apply_softmax=softmax)
        torch.testing.assert_close(_pair_scores(loaded, PAIRS, softmax), expected_scores, **TOL)


@pytest.mark.parametrize(
    ("changes", "activation", "marked"),
    [
        ({}, "sigmoid", False),  # a plain one-label classifier: CrossEncoder's default
        (  # sentence-transformers 4 and 5
            {"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}},
            "identity",
            True,
        ),
        ({"sentence_transformers": {"version": "4.1.0"}}, "sigmoid", True),
        (  # older: cross-encoder/ms-marco-MiniLM-L-6-v2 and its kin
            {"sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"},
            "identity",
            True,
        ),
        ({"sbert_ce_default_activation_function": None}, "sigmoid", False),
    ],
)
def test_cross_encoders_saved_by_older_versions(tmp_path, dirs, changes, activation, marked):
    from sentence_transformers import CrossEncoder

    directory = shutil.copytree(dirs["reranker"], tmp_path / "ce")
    _edit_json(directory / "config.json", **changes)
    loaded = _load(directory)
    caps = loaded.capabilities
    assert (caps.score_activation, caps.cross_encoder, caps.rerank) == (activation, marked, True)
    assert caps.labels == ("LABEL_0",) and caps.max_tokens == SIZES["max_position_embeddings"]
    reference = CrossEncoder(str(directory), device="cpu").predict(PAIRS, convert_to_tensor=True)
    torch.testing.assert_close(_pair_scores(loaded, PAIRS), reference, **TOL)


def test_cross_encoder_activations_we_cannot_reproduce(tmp_path, dirs, caplog):
    directory = shutil.copytree(dirs["reranker"], tmp_path / "ce")
    _edit_json(
        directory / "config.json",
        sentence_transformers={"activation_fn": "torch.nn.modules.activation.ReLU"},
    )
    with pytest.raises(
        CheckpointError, match=r"config\.json: sentence_transformers\.activation_fn"
    ):
        _load(directory)
    # A class outside torch: CrossEncoder ignores it without trust_remote_code, and so do we.
    _edit_json(directory / "config.json", sentence_transformers={"activation_fn": "my.Scaled"})
    with caplog.at_level(logging.WARNING, logger="model.layout"):
        assert _load(directory).capabilities.score_activation == "sigmoid"
    assert "my.Scaled" in caplog.text
    # A CrossEncoder's model must be a classifier.
    mlm = shutil.copytree(dirs["mlm"], tmp_path / "mlm")
    _edit_json(mlm / "config.json", sbert_ce_default_activation_function="torch.nn.Tanh")
    with pytest.raises(CheckpointError, match="CrossEncoder's model must be a sequence classifier"):
        _load(mlm)


# -- SparseEncoder (SPLADE) -----------------------------------------------------------------------


def _sparse_encoder(base: Path, pooling: str = "max", activation: str = "relu", **kwargs):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    modules = [
        Transformer(str(base), transformer_task="fill-mask"),
        SpladePooling(pooling_strategy=pooling, activation_function=activation),
    ]
    return SparseEncoder(modules=modules, device="cpu", **kwargs)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize(
    ("pooling", "activation", "max_active_dims"),
    [("max", "relu", None), ("sum", "log1p_relu", None), ("max", "relu", 7)],
)
def test_sparse_encoder_directories_encode_as_sentence_transformers(
    tmp_path, dirs, pooling, activation, max_active_dims
):
    from sentence_transformers import SparseEncoder

    _sparse_encoder(dirs["mlm"], pooling, activation, max_active_dims=max_active_dims).save(
        str(tmp_path / "splade")
    )
    loaded = _load(tmp_path / "splade")
    caps = loaded.capabilities
    assert (caps.sparse, caps.sparse_encoder, caps.fill_mask) == (True, True, True)
    assert (caps.splade_pooling, caps.splade_activation) == (pooling, activation)
    assert caps.splade_max_active_dims == max_active_dims
    assert caps.prompts == {"query": "", "document": ""}  # SparseEncoder's, empty
    reference = SparseEncoder(str(tmp_path / "splade"), device="cpu").encode(
        TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False
    )
    encs = loaded.tokenizer.encode_batch(TEXTS, truncation=True, max_length=caps.max_tokens)
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    settings = dict(pooling=pooling, activation=activation, max_active_dims=max_active_dims)
    with torch.no_grad():
        ours = loaded.model.splade(ids, mask, **settings)  # (B, V), fast path
        dense = splade(loaded.model(ids, mask).logits, mask, **settings)  # (B, V) from all logits
    assert reference.shape == ours.shape == (len(TEXTS), 1500)
    assert (reference.count_nonzero(dim=1) > 0).all()
    torch.testing.assert_close(ours, reference, **TOL)
    torch.testing.assert_close(dense, reference, **TOL)
    if max_active_dims is not None:
        assert ((ours != 0).sum(dim=1) <= max_active_dims).all()


def test_older_sparse_encoder_layout_mlm_transformer(tmp_path, dirs):
    """sentence-transformers 5.0 to 5.3: MLMTransformer, word_embedding_dimension."""
    directory = tmp_path / "splade"
    _sparse_encoder(dirs["mlm"]).save(str(directory))
    modules = json.loads((directory / "modules.json").read_text())
    modules[0]["type"] = "sentence_transformers.sparse_encoder.models.MLMTransformer"
    modules[1]["type"] = "sentence_transformers.sparse_encoder.models.SpladePooling"
    (directory / "modules.json").write_text(json.dumps(modules))
    legacy = {"pooling_strategy": "max", "activation_function": "relu"}
    legacy["word_embedding_dimension"] = 1500
    (directory / "1_SpladePooling" / "config.json").write_text(json.dumps(legacy))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 16, "do_lower_case": False})
    )
    caps = _load(directory).capabilities
    assert caps.sparse_encoder and caps.max_tokens == 16
    assert (caps.splade_pooling, caps.splade_activation) == ("max", "relu")


def test_splade_equals_the_formula_on_transformers_logits(dirs):
    """max over non-padding, non-special tokens of log(1 + relu(logits)), from transformers'
    AutoModelForMaskedLM, against `splade` and the model's fast path."""
    hf = transformers.AutoModelForMaskedLM.from_pretrained(dirs["mlm"]).eval()
    loaded = _load(dirs["mlm"])
    encs = loaded.tokenizer.encode_batch(TEXTS)
    ids = torch.tensor([e.ids for e in encs])
    mask = torch.tensor([e.attention_mask for e in encs])
    special = torch.tensor([e.special_tokens_mask for e in encs])  # [CLS], [SEP], [PAD], [MASK]
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        keep = (mask.bool() & ~special.bool()).unsqueeze(-1)  # (B, T, 1)
        weights = torch.log(1 + torch.relu(logits)).masked_fill(~keep, 0.0)  # (B, T, V)
        expected = weights.max(dim=1).values  # (B, V)
        ours = loaded.model.splade(ids, mask, special_tokens_mask=special)
    assert expected.count_nonzero() > 0
    torch.testing.assert_close(splade(logits, mask, special), expected, **TOL)
    torch.testing.assert_close(ours, expected, **TOL)
    # Special tokens count unless excluded: SparseEncoder pools [CLS] and [SEP] too.
    assert not torch.allclose(splade(logits, mask), expected)
    # A row with nothing to pool is zeros, in both paths.
    only_special = torch.tensor([[loaded.tokenizer.cls_token_id, loaded.tokenizer.sep_token_id]])
    both = torch.ones_like(only_special)
    assert loaded.model.splade(only_special, special_tokens_mask=both).count_nonzero() == 0


def test_splade_known_answers_and_top_k():
    logits = torch.tensor([[[1.0, -2.0], [math.e - 1, 0.5], [9.0, 9.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(splade(logits, mask), torch.tensor([[1.0, math.log(1.5)]]))
    torch.testing.assert_close(
        splade(logits, mask, torch.tensor([[0, 1, 0]])), torch.tensor([[math.log(2.0), 0.0]])
    )
    total = splade(logits, mask, pooling="sum")
    torch.testing.assert_close(total, torch.tensor([[math.log(2.0) + 1.0, math.log(1.5)]]))
    torch.testing.assert_close(
        top_k_dims(torch.tensor([[0.1, 3.0, 0.5]]), 2), torch.tensor([[0.0, 3.0, 0.5]])
    )
    torch.testing.assert_close(
        activate_scores(torch.tensor([[0.0], [2.0]]), "sigmoid"), torch.tensor([0.5, 0.880797])
    )
    # Differentiable (SPLADE training): nothing is overwritten that autograd needs.
    trained = logits.clone().requires_grad_()
    splade(trained, mask, activation="log1p_relu").sum().backward()
    assert trained.grad is not None and trained.grad[0, 2].abs().sum() == 0  # padding: no grad


def test_mlm_checkpoints_are_sparse_capable_and_encoders_are_not(dirs):
    caps = _load(dirs["mlm"]).capabilities
    assert caps.sparse and not caps.sparse_encoder and not caps.cross_encoder
    assert (caps.splade_pooling, caps.splade_activation, caps.splade_max_active_dims) == (
        "max",
        "relu",
        None,
    )
    assert caps.score_activation is None and not caps.rerank
    plain = _load(dirs["encoder"]).capabilities
    assert not plain.sparse and plain.prompts == {} and plain.default_prompt_name is None
    # Every new field has a default: a Capabilities built as before still builds.
    old = Capabilities("BertModel", False, False, (), "mean", True, 512)
    assert old.to_dict()["prompts"] == {} and not old.rerank and not old.sparse


def test_sparse_and_cross_encoder_layout_refusals(tmp_path, dirs):
    splade_dir = tmp_path / "splade"
    _sparse_encoder(dirs["mlm"]).save(str(splade_dir))
    pooling = splade_dir / "1_SpladePooling" / "config.json"
    _edit_json(pooling, pooling_strategy="mean")
    with pytest.raises(CheckpointError, match="pooling_strategy 'mean' is not supported"):
        _load(splade_dir)
    _edit_json(pooling, pooling_strategy="max")
    _edit_json(splade_dir / "sentence_bert_config.json", transformer_task="feature-extraction")
    with pytest.raises(CheckpointError, match="transformer_task 'feature-extraction' does not fit"):
        _load(splade_dir)
    _edit_json(splade_dir / "sentence_bert_config.json", transformer_task="fill-mask")
    _edit_json(splade_dir / "config_sentence_transformers.json", model_type="SentenceTransformer")
    with pytest.raises(CheckpointError, match="model_type 'SentenceTransformer' does not fit"):
        _load(splade_dir)
    _edit_json(splade_dir / "config_sentence_transformers.json", model_type="SparseEncoder")
    _edit_json(splade_dir / "config_sentence_transformers.json", max_active_dims=0)
    with pytest.raises(CheckpointError, match="max_active_dims must be a positive integer"):
        _load(splade_dir)
    # SpladePooling over a model without MLM head.
    encoder_splade = tmp_path / "encoder_splade"
    shutil.copytree(splade_dir, encoder_splade)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(dirs["encoder"] / name, encoder_splade / name)
    _edit_json(encoder_splade / "config_sentence_transformers.json", max_active_dims=None)
    with pytest.raises(CheckpointError, match=r"SparseEncoder .* needs an MLM head"):
        _load(encoder_splade)
    # Modules we do not run.
    modules = json.loads((splade_dir / "modules.json").read_text())
    modules[1]["type"] = "sentence_transformers.sparse_encoder.modules.SparseStaticEmbedding"
    (splade_dir / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="lists Transformer, SparseStaticEmbedding"):
        _load(splade_dir)


# -- prompts --------------------------------------------------------------------------------------


def test_prompts_are_read_and_reproduce_encode(tmp_path, dirs):
    from sentence_transformers import SentenceTransformer

    directory = st_dir(tmp_path / "bi", dirs["encoder"], pooling="mean")
    settings = directory / "config_sentence_transformers.json"
    prompts = {"query": "query: ", "passage": "passage: ", "none": None}
    _edit_json(settings, prompts=prompts, default_prompt_name="query")
    loaded = _load(directory)
    caps = loaded.capabilities
    assert caps.prompts == {"query": "query: ", "passage": "passage: ", "none": ""}
    assert caps.default_prompt_name == "query" and caps.sentence_transformers
    assert not caps.sparse and caps.score_activation is None
    # encode() prepends the default prompt; the server prepends caps.prompts[name] the same way.
    reference = SentenceTransformer(str(directory), device="cpu")
    for name in (None, "passage"):
        expected = reference.encode(TEXTS[:2], prompt_name=name, convert_to_tensor=True)
        prompt = caps.prompts[name or caps.default_prompt_name]
        encs = loaded.tokenizer.encode_batch([prompt + t for t in TEXTS[:2]])
        ids = torch.tensor([e.ids for e in encs])
        mask = torch.tensor([e.attention_mask for e in encs])
        with torch.no_grad():
            ours = loaded.model.embed(ids, mask, pooling=caps.pooling, normalize=caps.normalize)
        torch.testing.assert_close(ours, expected, **TOL)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompts": ["query: "]}, "prompts must be an object of prompt names to prompt strings"),
        ({"prompts": {"query": 3}}, "prompts must be an object"),
        ({"prompts": {"query": "q: "}, "default_prompt_name": "passage"}, "'passage' is not one"),
        ({"prompts": None}, "prompts must be an object"),
    ],
)
def test_bad_prompts_are_refused_naming_the_file(tmp_path, dirs, changes, message):
    directory = st_dir(tmp_path / "bi", dirs["encoder"], pooling="mean")
    _edit_json(directory / "config_sentence_transformers.json", **changes)
    with pytest.raises(CheckpointError, match=message) as info:
        _load(directory)
    assert "config_sentence_transformers.json" in str(info.value)


def test_pooling_without_the_prompt_is_refused_only_with_a_prompt(tmp_path, dirs):
    directory = st_dir(tmp_path / "bi", dirs["encoder"], pooling="mean")
    _edit_json(directory / "1_Pooling" / "config.json", include_prompt=False)
    assert _load(directory).capabilities.pooling == "mean"  # empty prompts: nothing excluded
    _edit_json(directory / "config_sentence_transformers.json", prompts={"query": "q: "})
    with pytest.raises(CheckpointError, match="include_prompt false"):
        _load(directory)
