"""ServeConfig sources and validation, and the bert-serve CLI.

Graceful shutdown of a real bert-serve process is tested in
tests/reliability/test_graceful_shutdown.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from app_testing import REPO
from pydantic import ValidationError

from app.cli import build_parser, load_config
from app.config import ConfigFileError, ServeConfig


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("BERT_SERVE_"):
            monkeypatch.delenv(key)


def test_precedence_cli_over_env_over_yaml_over_defaults(tmp_path, monkeypatch):
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text("checkpoint: /models/a\nmax_batch_size: 8\nmax_wait_ms: 7\nport: 9000\n")
    monkeypatch.setenv("BERT_SERVE_MAX_WAIT_MS", "3")
    monkeypatch.setenv("BERT_SERVE_PORT", "9001")
    cfg = ServeConfig.load(cfg_file, port="9002", max_client_batch=4)
    assert cfg.checkpoint == Path("/models/a")  # YAML
    assert cfg.max_batch_size == 8  # YAML over default
    assert cfg.max_wait_ms == 3.0  # env over YAML
    assert cfg.port == 9002  # CLI over env
    assert cfg.max_queue == ServeConfig.model_fields["max_queue"].default


def test_unknown_keys_are_errors(tmp_path, monkeypatch):
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text("checkpoint: x\nmax_batch_sise: 8\n")
    with pytest.raises(ConfigFileError, match="max_batch_sise"):
        ServeConfig.load(cfg_file)
    cfg_file.write_text("- a list\n")
    with pytest.raises(ConfigFileError, match="mapping"):
        ServeConfig.load(cfg_file)
    with pytest.raises(ConfigFileError, match="cannot read"):
        ServeConfig.load(tmp_path / "missing.yaml")
    monkeypatch.setenv("BERT_SERVE_MAX_BATCH_SISE", "8")
    with pytest.raises(ConfigFileError, match="BERT_SERVE_MAX_BATCH_SISE"):
        ServeConfig.load(checkpoint="x")
    monkeypatch.delenv("BERT_SERVE_MAX_BATCH_SISE")
    with pytest.raises(ValidationError, match="nonsense"):
        ServeConfig(checkpoint="x", nonsense=1)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"max_client_batch": 64, "max_batch_size": 32}, "max_client_batch"),
        ({"max_batch_tokens": 100, "max_input_tokens": 512}, "max_batch_tokens"),
        ({"watch": True}, "models_root"),
        ({"admin_token": "a" * 20, "admin_token_file": "/x"}, "not both"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"port": 70000}, "port"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_invalid_settings_name_the_field(values, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ServeConfig(**{"checkpoint": "x", **values})


def test_checkpoint_required_unless_watching(tmp_path):
    with pytest.raises(ValidationError, match="checkpoint is required"):
        ServeConfig()
    assert ServeConfig(watch=True, models_root=tmp_path).checkpoint is None


def test_admin_token_file_and_batching_switch(tmp_path):
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123\n")
    cfg = ServeConfig(checkpoint="x", admin_token_file=token, batching=False)
    assert cfg.read_admin_token() == "0123456789abcdef0123"
    assert cfg.batching_settings()["max_batch_size"] == 1
    assert cfg.batching_settings()["max_wait_ms"] == 0
    token.write_text("short")
    with pytest.raises(ConfigFileError, match="16 characters"):
        cfg.read_admin_token()
    assert "secret" not in repr(ServeConfig(checkpoint="x", admin_token="secret" * 4))
    assert ServeConfig(checkpoint="x").read_admin_token() is None


def test_cli_flags_map_to_config(tmp_path):
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text("max_batch_size: 8\nbatching: true\n")
    cfg = load_config(
        [
            "--checkpoint",
            "ckpt",
            "--config",
            str(cfg_file),
            "--no-batching",
            "--max-wait-ms",
            "2.5",
            "--models-root",
            str(tmp_path),
            "--watch",
            "--port",
            "0",
        ]
    )
    assert cfg.checkpoint == Path("ckpt") and cfg.max_batch_size == 8
    assert cfg.batching is False and cfg.max_wait_ms == 2.5 and cfg.watch and cfg.port == 0
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--checkpoint", "x", "--max-batch-size", "lots"])
    assert exit_info.value.code == 2
    flags = build_parser().format_help()
    for flag in ("--admin-token-file", "--max-batch-tokens", "--request-timeout-s", "--watch"):
        assert flag in flags


def test_app_never_imports_training():
    import ast

    for path in (REPO / "app").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "training" or n.startswith("training.") for n in names), path


def test_empty_admin_token_means_admin_api_off(monkeypatch, tmp_path):
    monkeypatch.setenv("BERT_SERVE_ADMIN_TOKEN", "")
    config = ServeConfig.load(None, checkpoint=tmp_path)
    assert config.admin_token is None and config.read_admin_token() is None
