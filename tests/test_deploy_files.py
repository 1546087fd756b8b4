"""The Dockerfile, compose file and publish script stay consistent with the CLIs and ServeConfig."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import yaml

from app.cli import build_parser
from app.config import ServeConfig
from training.cli import build_parser as train_parser
from training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _json_instruction(name: str) -> list[str]:
    m = re.search(rf"^{name}\s+(\[.*\])\s*$", _dockerfile(), re.MULTILINE)
    assert m, f"Dockerfile has no exec-form {name}"
    return json.loads(m.group(1))


def _serve_flags() -> set[str]:
    return {s for a in build_parser()._actions for s in a.option_strings}


def _assert_parses(args: list[str]) -> None:
    known = _serve_flags()
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=")[0] in known, f"bert-serve has no flag {arg}"
    build_parser().parse_args(args)  # exits (SystemExit) on a bad flag or value


def test_dockerfile_entrypoint_and_cmd_match_the_cli():
    assert _json_instruction("ENTRYPOINT") == ["bert-serve"]
    cmd = _json_instruction("CMD")
    _assert_parses(cmd)
    assert cmd[cmd.index("--port") + 1] == str(ServeConfig.model_fields["port"].default)
    checkpoint = cmd[cmd.index("--checkpoint") + 1]
    assert f"COPY checkpoints/default/ {checkpoint}/" in _dockerfile()
    assert (ROOT / "checkpoints" / "default" / "model.safetensors").is_file()
    assert re.search(r"^EXPOSE 8000$", _dockerfile(), re.MULTILINE)
    assert "/health" in _dockerfile() and "HEALTHCHECK" in _dockerfile()
    assert re.search(r"^USER bert$", _dockerfile(), re.MULTILINE), "the image must not run as root"
    assert "ARG BASE_IMAGE=python:3.11-slim" in _dockerfile()


def test_compose_services_match_the_cli_and_config():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    api = compose["services"]["api"]
    _assert_parses(api["command"])
    root = api["command"][api["command"].index("--models-root") + 1]
    assert "--watch" in api["command"]
    assert f"models:{root}" in api["volumes"]
    assert any(p.endswith(":8000") for p in api["ports"])
    # Settings files name only real ServeConfig fields (unknown BERT_SERVE_* keys are errors).
    for env_file in api["env_file"]:
        for line in (ROOT / env_file).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key = line.split("=", 1)[0]
                assert key.startswith("BERT_SERVE_")
                assert key.removeprefix("BERT_SERVE_").lower() in ServeConfig.model_fields, key
    trainer = compose["services"]["trainer"]
    assert trainer["profiles"] == ["train"]
    assert f"models:{root}" in trainer["volumes"]
    assert compose["services"]["prometheus"]["profiles"] == ["monitoring"]
    assert (ROOT / "deploy" / "prometheus.yml").is_file()


def test_publish_script_uses_real_training_flags():
    script = (ROOT / "deploy" / "train-and-publish.sh").read_text(encoding="utf-8")
    known = {s for a in train_parser()._actions for s in a.option_strings}
    command = re.search(r"^bert-train \\\n(?:.*\\\n)*.*$", script, re.MULTILINE)
    assert command, "the script does not run bert-train"
    flags = re.findall(r"(--[a-z][a-z_.-]*)", command.group(0))
    assert "--output-dir" in flags
    for flag in flags:
        if "." in flag:  # a config override: --train.KEY
            section, key = flag[2:].split(".", 1)
            assert section == "train" and key in {f.name for f in fields(TrainConfig)}, flag
        else:
            assert flag in known, f"bert-train has no flag {flag}"
    for path in re.findall(r"/app/(data/\S+\.txt)", script):
        assert (ROOT / path).is_file(), path
    assert 'mv "$MODELS_ROOT/.current.tmp" "$MODELS_ROOT/current"' in script
