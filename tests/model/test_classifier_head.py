"""The sequence-classification head: transformers parity both ways, labels in config.json, and the
errors for classifier configs and weights that do not match."""

from __future__ import annotations

import json

import pytest
import torch

from model import BertConfig, BertForMaskedLM, CheckpointError, ConfigError, load_checkpoint

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
    write(problem_type="regression")
    with pytest.raises(ConfigError, match="problem_type 'regression' is not supported"):
        load_checkpoint(tmp_path, BertForMaskedLM)
    write(id2label={"0": "a", "2": "b"}, label2id={"a": 0, "b": 2}, num_labels=2)
    with pytest.raises(ConfigError, match=r"ids must be 0\.\.1"):
        load_checkpoint(tmp_path, BertForMaskedLM)
    write(id2label={"0": "a", "1": "b"}, label2id={"a": 0, "b": 1}, num_labels=2)
    with pytest.raises(CheckpointError, match=r"classifier\.weight"):  # 3 rows stored, 2 labels
        load_checkpoint(tmp_path, BertForMaskedLM)
    with pytest.raises(ConfigError, match="at least two distinct"):
        BertConfig(**SHAPE, labels=("a", "a"))
    # An MLM checkpoint whose config claims a classifier: no classifier tensors to load.
    mlm = tmp_path / "mlm"
    BertForMaskedLM(BertConfig(**SHAPE)).save_pretrained(mlm)
    claimed = json.loads((mlm / "config.json").read_text())
    claimed.update(architectures=["BertForSequenceClassification"], id2label={"0": "x", "1": "y"})
    (mlm / "config.json").write_text(json.dumps(claimed))
    with pytest.raises(CheckpointError, match="weights have no classifier tensors"):
        load_checkpoint(mlm, BertForMaskedLM)
