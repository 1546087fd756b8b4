"""The Dockerfile, compose files, nginx config and publish script stay consistent with the CLIs,
ServeConfig, pyproject.toml and one another."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import fields
from pathlib import Path

import yaml

from app.cli import build_parser
from app.config import ServeConfig
from training.pretrain.cli import build_parser as train_parser
from training.pretrain.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _stages() -> dict[str, tuple[str, str]]:
    """Build stage name -> (what it is FROM, its lines), in file order."""
    stages: dict[str, tuple[str, str]] = {}
    parts = re.split(r"^(FROM\s+\S+\s+AS\s+\S+)\s*$", _dockerfile(), flags=re.MULTILINE)
    for head, body in zip(parts[1::2], parts[2::2], strict=True):
        _, base, _, name = head.split()
        stages[name] = (base, body)
    return stages


def _json_instruction(name: str, stage: str = "api") -> list[str]:
    """The last exec-form `name` of `stage` or of the stages it is built FROM."""
    stages, found = _stages(), []
    while stage in stages:
        stage, body = stages[stage]
        found = found or re.findall(rf"^{name}\s+(\[.*\])\s*$", body, re.MULTILINE)
    assert found, f"Dockerfile has no exec-form {name}"
    return json.loads(found[-1])


def _compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


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
    assert f"COPY --chown=bert:bert checkpoints/default/ {checkpoint}/" in _dockerfile()
    assert (ROOT / "checkpoints" / "default" / "model.safetensors").is_file()
    assert re.search(r"^EXPOSE 8000$", _dockerfile(), re.MULTILINE)
    assert "/health" in _dockerfile() and "HEALTHCHECK" in _dockerfile()
    assert re.search(r"^USER bert$", _dockerfile(), re.MULTILINE), "the image must not run as root"
    assert "ARG BASE_IMAGE=python:3.11-slim" in _dockerfile()


def test_dockerfile_targets_api_slim_and_trainer_on_top():
    stages = _stages()
    # The legacy builder (docker-compose 1.29) builds every stage above its target.
    assert list(stages)[-2:] == ["api", "trainer"]
    assert stages["trainer"][0] == "api"
    builder, api, trainer = stages["builder"][1], stages["api"][1], stages["trainer"][1]
    # The builder installs [project].dependencies only; the trainer adds the `train` extra.
    assert "['project']['dependencies']" in builder
    assert "['optional-dependencies']['train']" in trainer
    project = _pyproject()["project"]
    core = " ".join(project["dependencies"])
    for heavy in ("matplotlib", "tensorboard"):
        assert heavy not in core, f"{heavy} is a training dependency, not a serving one"
        assert any(d.startswith(heavy) for d in project["optional-dependencies"]["train"])
    # The api copies only the virtualenv and the checkpoint; the corpus is the trainer's.
    assert "COPY --from=builder /opt/venv /opt/venv" in api
    assert not re.search(r"^COPY\s+(data|configs|deploy)/", api, re.MULTILINE)
    for top in ("data", "configs"):
        assert re.search(rf"^COPY\s+{top}/\s+{top}/", trainer, re.MULTILINE), top
    assert _json_instruction("ENTRYPOINT", "trainer") == ["/app/deploy/train-and-publish.sh"]
    assert "COPY deploy/train-and-publish.sh deploy/" in trainer
    assert re.search(r"^HEALTHCHECK NONE$", trainer, re.MULTILINE)
    assert re.findall(r"^USER (\S+)$", trainer, re.MULTILINE)[-1] == "bert"
    train_cmd = _json_instruction("CMD", "trainer")
    assert (ROOT / train_cmd[train_cmd.index("--config") + 1]).is_file()
    assert '-e ".[dev,bench,train]"' in (ROOT / "Makefile").read_text(encoding="utf-8")


def test_compose_services_match_the_cli_and_config():
    compose = _compose()
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
    for name in ("api", "trainer"):
        service = compose["services"][name]
        assert service["build"]["target"] == name
        assert service["image"] == f"bertserve-{name}:latest"
    assert trainer["entrypoint"] == _json_instruction("ENTRYPOINT", "trainer")


def test_scale_compose_is_standalone_and_agrees_with_the_single_one():
    text = (ROOT / "docker-compose.scale.yml").read_text(encoding="utf-8")
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "!reset" not in code and "!override" not in code  # docker-compose 1.29 has neither
    scale, single = _compose("docker-compose.scale.yml"), _compose()
    api = scale["services"]["api"]
    assert "ports" not in api, "replicas take no host port (they would collide); lb has it"
    assert api["expose"] == ["8000"]
    for name in ("api", "trainer"):
        for key in ("image", "build", "command", "volumes", "env_file", "entrypoint", "profiles"):
            assert scale["services"][name].get(key) == single["services"][name].get(key), key
    lb = scale["services"]["lb"]
    assert any(p.endswith(":8000") for p in lb["ports"])
    assert lb["depends_on"] == ["api"]
    assert lb["build"]["target"] == "lb" and lb["image"] == "bertserve-lb:latest"
    lb_stage = _stages()["lb"][1]
    assert "COPY deploy/nginx.conf /etc/nginx/nginx.conf" in lb_stage
    assert re.search(r"^EXPOSE 8000$", lb_stage, re.MULTILINE)
    # Before the builder: the legacy builder builds every stage above a target.
    assert list(_stages()).index("lb") < list(_stages()).index("builder")


def _nginx() -> str:
    text = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    return "\n".join(line.split("#")[0] for line in text.splitlines())


def _directive(name: str) -> list[str]:
    return [m.strip() for m in re.findall(rf"^\s*{name}\s+([^;]+);", _nginx(), re.MULTILINE)]


def test_nginx_resolves_replicas_per_request_and_retries_safely():
    # proxy_pass through a variable: the name `api` is resolved at request time by Docker's DNS,
    # so replicas that are restarted, replaced or added are found (an upstream{} resolves once).
    assert _directive("resolver")[0].startswith("127.0.0.11 valid=")
    passes = _directive("proxy_pass")
    assert passes and all(re.fullmatch(r"http://\$api_host:8000", p) for p in passes)
    assert not re.search(r"^\s*upstream\s", _nginx(), re.MULTILINE)
    retry = _directive("proxy_next_upstream")
    assert set(retry[0].split()) == {"error", "timeout", "http_503", "non_idempotent"}
    assert "non_idempotent" not in retry[1], "/admin must not be repeated on another replica"
    assert int(_directive("proxy_next_upstream_tries")[0]) >= 2
    headers = {h.split()[0] for h in _directive("add_header")}
    assert {"X-Replica", "X-Upstream-Status"} <= headers
    assert "proxy_hide_header" not in _nginx()  # X-Model-Version passes through


def test_nginx_cuts_off_slow_clients_and_has_room_for_them():
    for name in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert _directive(name), name
    header_timeout = _directive("client_header_timeout")[0]
    smoke = (ROOT / "deploy" / "docker_scale_smoke.py").read_text(encoding="utf-8")
    assert f"HEADER_TIMEOUT_S = {float(header_timeout.removesuffix('s'))}" in smoke
    assert int(_directive("worker_connections")[0]) >= 2 * 900 + 500
    assert int(_directive("worker_rlimit_nofile")[0]) >= 2 * int(
        _directive("worker_connections")[0]
    )


def test_serving_code_does_not_import_the_training_stack():
    # The api image has no matplotlib or tensorboard: nothing serving loads may import them, and
    # training imports them only inside the functions that draw or log.
    for package in ("app", "model", "tokenization", "atomicio"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(
                r"^\s*(from|import) (matplotlib|tensorboard|training)\b", text, re.M
            ), path
    for path in (ROOT / "training").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^(from|import) (matplotlib|tensorboard)\b", text, re.M), path


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
