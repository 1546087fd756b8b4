"""TrainConfig validation, YAML loading, command-line overrides and the shipped configs."""

from __future__ import annotations

import pytest
import yaml

from model import BertConfig
from training.pretrain.cli import split_overrides
from training.pretrain.config import TrainConfig, load_run_config
from training.pretrain.prepare import build_model_config
from training.run.options import TrainConfigError

SHIPPED = {
    "bert_tiny.yaml": (2, 128, 2, 512),
    "bert_mini.yaml": (4, 256, 4, 1024),
    "bert_small.yaml": (4, 512, 8, 2048),
    "bert_base.yaml": (12, 768, 12, 3072),
}


@pytest.mark.parametrize(("name", "shape"), SHIPPED.items())
def test_shipped_configs_load_and_have_their_shapes(name, shape):
    from train_testing import REPO

    model, train = load_run_config(REPO / "configs" / name)
    config = build_model_config(model, 8000, train)
    got = (
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
    )
    assert got == shape
    assert config.vocab_size == 8000  # always the tokenizer's real size
    assert config.norm_position == "post"  # loadable by transformers
    assert train.max_seq_length <= config.max_position_embeddings


def test_yaml_and_overrides_dotted_and_flat(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model:\n  hidden_size: 64\n  num_attention_heads: 4\n  layer_norm_eps: 1e-12\ntrain:\n  lr: 1e-3\n  batch_size: 4\n"
    )
    model, train = load_run_config(
        path,
        [
            ("train.lr", "2e-4"),
            ("batch-size", "16"),  # flat, dashes allowed
            ("model.num_hidden_layers", "3"),
            ("packing", "false"),
            ("time_budget_minutes", "1.5"),
        ],
    )
    assert train.lr == 2e-4 and isinstance(train.lr, float)
    assert train.batch_size == 16 and train.packing is False
    assert train.time_budget_minutes == 1.5
    assert model == {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "layer_norm_eps": "1e-12",
        "num_hidden_layers": 3,
    }
    # PyYAML reads 1e-12 as a string; building the model config coerces it.
    assert build_model_config(model, 100, train).layer_norm_eps == 1e-12


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ([("train.lrr", "1")], "unknown train setting --train.lrr"),
        ([("model.hiden_size", "1")], "unknown model setting --model.hiden_size"),
        ([("nonsense", "1")], "unknown setting --nonsense"),
        ([("optim.lr", "1")], "section must be model or train"),
        ([("batch_size", "many")], "batch_size='many' is invalid: expected int"),
        ([("lr", "-1")], r"train.lr=-1.0 is invalid: must be > 0"),
        ([("precision", "fp8")], "must be one of"),
        ([("mlm_probability", "1.5")], "mlm_probability"),
    ],
)
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(TrainConfigError, match=match):
        load_run_config(None, overrides)


def test_unknown_keys_in_the_file_are_errors(tmp_path):
    bad_train = tmp_path / "a.yaml"
    bad_train.write_text(yaml.safe_dump({"train": {"learning_rate": 1.0}}))
    with pytest.raises(TrainConfigError, match="learning_rate"):
        load_run_config(bad_train)
    bad_model = tmp_path / "b.yaml"
    bad_model.write_text(yaml.safe_dump({"model": {"hidden": 3}}))
    with pytest.raises(TrainConfigError, match="hidden"):
        load_run_config(bad_model)
    bad_section = tmp_path / "c.yaml"
    bad_section.write_text(yaml.safe_dump({"optimizer": {}}))
    with pytest.raises(TrainConfigError, match="optimizer"):
        load_run_config(bad_section)


def test_train_config_validation_in_post_init():
    assert TrainConfig().mlm_probability == 0.15
    with pytest.raises(TrainConfigError, match="mask_token_prob"):
        TrainConfig(mask_token_prob=0.9, random_token_prob=0.2)
    with pytest.raises(TrainConfigError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(TrainConfigError, match="fp16"):
        TrainConfig(precision="fp16", device="cpu")
    with pytest.raises(TrainConfigError, match="max_steps"):
        TrainConfig(max_steps=0)
    with pytest.raises(TrainConfigError, match="unknown train setting"):
        TrainConfig.from_dict({"bogus": 1})


def test_a_checkpoint_training_config_round_trips_as_config(tmp_path):
    model, train = load_run_config(None, [("hidden_size", "48"), ("lr", "5e-4")])
    dumped = {
        "model": {"hidden_size": 48},
        "train": train.to_dict(),
        "run": {"corpus": ["x.txt"]},  # provenance is accepted and ignored
    }
    path = tmp_path / "training_config.yaml"
    path.write_text(yaml.safe_dump(dumped))
    model2, train2 = load_run_config(path)
    assert train2 == train and model2 == model


def test_max_seq_length_must_fit_the_position_table():
    _, train = load_run_config(None, [("max_seq_length", "256")])
    with pytest.raises(TrainConfigError, match="max_position_embeddings=128"):
        build_model_config({"max_position_embeddings": 128}, 100, train)
    assert isinstance(build_model_config({}, 100, train), BertConfig)


def test_split_overrides():
    assert split_overrides(["--lr", "1e-3", "--train.seed=3", "--x", "-1"]) == [
        ("lr", "1e-3"),
        ("train.seed", "3"),
        ("x", "-1"),
    ]
    with pytest.raises(TrainConfigError, match="needs a value"):
        split_overrides(["--lr"])
    with pytest.raises(TrainConfigError, match="unexpected argument"):
        split_overrides(["stray"])
