"""The sequence-classification head: transformers parity both ways, labels in config.json, and the
errors for classifier configs and weights that do not match."""

from __future__ import annotations

import json

import pytest
import torch

from model import (
    BertConfig,
    BertForMaskedLM,
    CheckpointError,
    ConfigError,
    ModelInputError,
    load_checkpoint,
)

transformers = pytest.importorskip("transformers")

SHAPE = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
LABELS = ("noun.animal", "verb.motion", "adj.all")


def _classifier(position: str) -> BertForMaskedLM:
    torch.manual_seed(0)
    cfg = BertConfig(**SHAPE, position_embedding_type=position, labels=LABELS)
    return BertForMaskedLM(cfg, mlm_head=False, classifier=True).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 99, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("position", ["absolute", "rotary"])
def test_ours_and_transformers_read_each_others_classifiers(tmp_path, position):
    ours = _classifier(position)
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    family = "RoFormer" if position == "rotary" else "Bert"
    assert config["architectures"] == [f"{family}ForSequenceClassification"]
    assert config["id2label"] == {"0": LABELS[0], "1": LABELS[1], "2": LABELS[2]}
    assert "labels" not in config  # only transformers' keys

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    ids, mask = _inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(ours.classify(ids, mask).logits, expected, atol=1e-5, rtol=0)
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_checkpoint(tmp_path / "hf", BertForMaskedLM)
    caps = loaded.capabilities
    assert caps.kind == f"{family}ForSequenceClassification"
    assert caps.labels == LABELS and not caps.fill_mask
    with torch.no_grad():
        got = loaded.model.classify(ids, mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_classify_runs_the_last_layer_at_cls_only_and_matches_the_full_encoder():
    model = _classifier("absolute")
    ids, mask = _inputs()
    with torch.no_grad():
        cls = model.encode(ids, mask)[:, 0]  # every position of every layer
        torch.testing.assert_close(
            model.classify(ids, mask).logits, model.classifier(cls), atol=1e-6, rtol=0
        )
        loss = model.classify(ids, mask, labels=torch.tensor([0, 2, 1])).loss
    assert loss is not None and loss.ndim == 0


def test_mismatched_classifier_configs_and_weights_are_refused(tmp_path):
    model = _classifier("absolute")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())

    def write(**changes):
        (tmp_path / "config.json").write_text(json.dumps({**config, **changes}))

    write(architectures=["BertForMaskedLM"])  # weights with a classifier, config without labels
    with pytest.raises(CheckpointError, match=r"classification head but config\.json names no"):
        load_checkpoint(tmp_path, BertForMaskedLM)
    write(problem_type="multi_label_classification")
    with pytest.raises(ConfigError, match="problem_type 'multi_label_classification' is not"):
        load_checkpoint(tmp_path, BertForMaskedLM)
    write(id2label={"0": "a", "2": "b"}, label2id={"a": 0, "b": 2}, num_labels=2)
    with pytest.raises(ConfigError, match=r"ids must be 0\.\.1"):
        load_checkpoint(tmp_path, BertForMaskedLM)
    write(id2label={"0": "a", "1": "b"}, label2id={"a": 0, "b": 1}, num_labels=2)
    with pytest.raises(CheckpointError, match=r"classifier\.weight"):  # 3 rows stored, 2 labels
        load_checkpoint(tmp_path, BertForMaskedLM)
    with pytest.raises(ConfigError, match="distinct non-empty label names"):
        BertConfig(**SHAPE, labels=("a", "a"))
    with pytest.raises(ConfigError, match="needs a classifier"):
        BertConfig(**SHAPE, problem_type="regression")
    with pytest.raises(ConfigError, match="needs at least two labels"):  # as transformers
        BertConfig(**SHAPE, labels=("a",), problem_type="single_label_classification")
    # An MLM checkpoint whose config claims a classifier: no classifier tensors to load.
    mlm = tmp_path / "mlm"
    BertForMaskedLM(BertConfig(**SHAPE)).save_pretrained(mlm)
    claimed = json.loads((mlm / "config.json").read_text())
    claimed.update(architectures=["BertForSequenceClassification"], id2label={"0": "x", "1": "y"})
    (mlm / "config.json").write_text(json.dumps(claimed))
    with pytest.raises(CheckpointError, match="weights have no classifier tensors"):
        load_checkpoint(mlm, BertForMaskedLM)


# -- one-label (reranker) and regression heads, on sentence pairs -------------------------------


def _hf_classifier(family: str, num_labels: int, problem_type: str | None = None):
    """transformers' {family}ForSequenceClassification, weights drawn wider than its init so that
    logits differ between inputs, and wide token-type embeddings so that segments matter.

    RoFormer's encoder stays narrower: with wide queries and keys its attention is so peaked that
    the float32 rounding of the rotation (ours a complex multiply, transformers' cos/sin sums;
    equal to 1e-16 in float64 with the same table) grows past 1e-5.
    """
    config_class = getattr(transformers, f"{family}Config")
    extra = {"embedding_size": SHAPE["hidden_size"]} if family == "RoFormer" else {}
    config = config_class(**SHAPE, **extra, num_labels=num_labels, problem_type=problem_type)
    torch.manual_seed(3)
    model = getattr(transformers, f"{family}ForSequenceClassification")(config).eval()
    g = torch.Generator().manual_seed(4)
    encoder_std = 0.3 if family == "Bert" else 0.03
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.3 if name.startswith("classifier") else encoder_std
            std = 1.0 if "token_type" in name else std
            p.copy_(torch.randn(p.shape, generator=g) * (std if p.dim() > 1 else 0.1))
    return model


def _pair_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three [CLS] A [SEP] B [SEP] rows, one padded: ids, attention mask, token type ids."""
    ids = torch.randint(5, 99, (3, 12), generator=torch.Generator().manual_seed(5))
    types = torch.zeros_like(ids)
    mask = torch.ones_like(ids)
    for row, (first_end, length) in enumerate([(5, 12), (3, 9), (7, 12)]):
        types[row, first_end + 1 : length] = 1  # B and its [SEP]
        mask[row, length:] = 0
        ids[row, length:] = 0
    return ids, mask, types


@pytest.mark.parametrize("family", ["Bert", "RoFormer"])
@pytest.mark.parametrize(("num_labels", "problem_type"), [(1, None), (3, "regression")])
def test_one_label_and_regression_heads_match_transformers_on_pairs(
    tmp_path, family, num_labels, problem_type
):
    hf = _hf_classifier(family, num_labels, problem_type)
    hf.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["id2label"] == {str(i): f"LABEL_{i}" for i in range(num_labels)}
    loaded = load_checkpoint(tmp_path, BertForMaskedLM)
    model, caps = loaded.model, loaded.capabilities
    assert model.config.labels == tuple(f"LABEL_{i}" for i in range(num_labels))
    assert model.config.classifier_problem == "regression"
    assert caps.kind == f"{family}ForSequenceClassification"
    ids, mask, types = _pair_inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = model.classify(ids, mask, types).logits  # (B, num_labels)
        assert got.shape == (3, num_labels)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        # The [CLS]-only last layer gives what the full encoder gives, token types included,
        # and the token types matter (a classify that dropped them would fail above).
        full = model.classifier(model.encode(ids, mask, types)[:, 0])
        torch.testing.assert_close(got, full, atol=1e-6, rtol=0)
        assert not torch.allclose(model.classify(ids, mask).logits, got, atol=1e-4)
    # The loss is transformers' mean squared error.
    targets = torch.rand(3) if num_labels == 1 else torch.rand(3, num_labels)
    hf_loss = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=targets).loss
    loss = model.classify(ids, mask, types, labels=targets).loss
    torch.testing.assert_close(loss, hf_loss, atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelInputError, match="regression labels must be float targets"):
        model.classify(ids, mask, types, labels=torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(
    ("labels", "problem_type", "written"),
    [
        (("score",), None, "regression"),
        (("score",), "regression", "regression"),  # the default for one label: stored as None
        (("a", "b", "c"), "regression", "regression"),
        (("a", "b"), None, "single_label_classification"),
        # transformers 5 leaves id2label out for its default two labels.
        (("LABEL_0", "LABEL_1"), None, "single_label_classification"),
    ],
)
def test_classifier_configs_round_trip_through_transformers(
    tmp_path, labels, problem_type, written
):
    cfg = BertConfig(**SHAPE, labels=labels, problem_type=problem_type)
    assert cfg.classifier_problem == written
    ours = BertForMaskedLM(cfg, mlm_head=False, classifier=True).eval()
    ours.save_pretrained(tmp_path / "ours")
    data = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert (data["num_labels"], data["problem_type"]) == (len(labels), written)
    assert data["id2label"] == {str(i): name for i, name in enumerate(labels)}
    assert data["label2id"] == {name: i for i, name in enumerate(labels)}
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours")
    assert (hf.config.num_labels, hf.config.problem_type) == (len(labels), written)
    assert hf.config.id2label == dict(enumerate(labels))
    hf.save_pretrained(tmp_path / "hf")
    written_back = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert ("id2label" in written_back) == (labels != ("LABEL_0", "LABEL_1"))
    back = load_checkpoint(tmp_path / "hf", BertForMaskedLM).model.config
    assert back == cfg  # labels and problem type, every other field too
    assert BertConfig.from_dict(cfg.to_dict()) == cfg


def test_problem_type_follows_the_labels_when_a_head_is_replaced():
    """Fine-tuning replaces the labels of a checkpoint's config (dataclasses.replace): a
    reranker's default regression becomes the new label count's default."""
    import dataclasses

    reranker = BertConfig(**SHAPE, labels=("LABEL_0",), problem_type="regression")
    assert reranker.problem_type is None and reranker.classifier_problem == "regression"
    tuned = dataclasses.replace(reranker, labels=LABELS)
    assert tuned.classifier_problem == "single_label_classification"
    model = BertForMaskedLM(tuned, mlm_head=False, classifier=True)
    ids, mask = _inputs()
    assert model.classify(ids, mask, labels=torch.tensor([0, 2, 1])).loss.ndim == 0
    assert BertConfig(**SHAPE).classifier_problem is None
