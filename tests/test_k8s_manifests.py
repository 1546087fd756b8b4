"""deploy/k8s/: every manifest validates against the strict OpenAPI schemas of a current Kubernetes
release (kubernetes-validate's bundled copies; offline, no cluster), and agrees with the
Dockerfile (port, user, paths), the CLIs (bert-serve, torchrun, bert-train) and ServeConfig.

Strict means unknown fields are errors, as in ``kubectl apply --validate=strict``:
``readinesProbe`` fails where a lax schema would silently drop it. Deliberately not checked here:
what only an API server knows (names being DNS labels, immutable fields, admission policies).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as k8s
from packaging.version import Version

from app.cli import build_parser as serve_parser
from app.config import ENV_PREFIX, ServeConfig
from training.pretrain.cli import build_parser as train_parser
from training.pretrain.cli import split_overrides
from training.pretrain.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = ROOT / "deploy" / "k8s"
# The newest release the installed package bundles (1.37 with kubernetes-validate 1.37.0).
KUBERNETES = k8s.latest_version()


# --- loading -------------------------------------------------------------------------------------
@functools.cache
def _documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) for every YAML document in deploy/k8s/, in file order."""
    docs = []
    for path in sorted(K8S_DIR.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path.name, doc))
    return tuple(docs)


def _doc_id(name: str, doc: dict[str, Any]) -> str:
    meta = doc.get("metadata", {})
    return f"{name}:{doc.get('kind')}/{meta.get('name') or meta.get('generateName', '?')}"


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    """A deep copy of the one document of this kind (and name): tests may mutate it."""
    found = [
        d
        for _, d in _documents()
        if d["kind"] == kind and (name is None or d["metadata"].get("name") == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s/, found {len(found)}"
    return copy.deepcopy(found[0])


def _validate(doc: dict[str, Any]) -> str:
    """The Kubernetes minor version it validated against; raises on any schema violation.

    A kind without a schema raises too (the CLI only warns): a typo in ``kind`` is an error.
    """
    return k8s.validate(doc, KUBERNETES, strict=True)


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _container(workload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = _pod(workload)["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _cores(quantity: str | int) -> float:
    """A CPU quantity in cores: ``"2"`` -> 2.0, ``"1500m"`` -> 1.5."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- the Dockerfile ------------------------------------------------------------------------------
@functools.cache
def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _stage(name: str) -> str:
    """Build stage ``name`` (``FROM ... AS name``) after the stages it builds on (``FROM api AS
    trainer``): what that image inherits, in order. The whole file if no stage has that name."""
    stages: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in _dockerfile().splitlines():
        m = re.match(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = (m.group(2) or "").lower()
            stages[current] = (m.group(1).lower(), [])
        if current is not None:
            stages[current][1].append(line)
    if name not in stages:
        return _dockerfile()
    chain = []
    while name in stages:
        base, lines = stages.pop(name)  # pop: a cycle cannot loop
        chain.insert(0, "\n".join(lines))
        name = base
    return "\n".join(chain)


def _last(instruction: str, stage: str) -> str:
    """The argument of the last ``instruction`` in ``stage`` (the one in force)."""
    found = re.findall(rf"^{instruction}\s+(.+?)\s*$", _stage(stage), re.M)
    assert found, f"Dockerfile stage {stage!r} has no {instruction}"
    return found[-1]


def _image_ids() -> tuple[int, int]:
    """(uid, gid) of the image's user, from its useradd/groupadd lines."""
    uids = set(re.findall(r"--uid\s+(\d+)", _dockerfile()))
    gids = set(re.findall(r"groupadd\b[^\n]*?--gid\s+(\d+)", _dockerfile()))
    assert len(uids) == 1 and len(gids) == 1, f"Dockerfile: uids {uids}, gids {gids}"
    return int(uids.pop()), int(gids.pop())


def _default_checkpoint() -> str:
    """Where the image keeps its default checkpoint (``COPY checkpoints/default/ /models/default/``)."""
    m = re.search(r"^COPY\s+(?:--\S+\s+)*checkpoints/default/?\s+(/\S+?)/?$", _dockerfile(), re.M)
    assert m, "the Dockerfile no longer copies checkpoints/default into the image"
    return m.group(1)


def _models_root() -> str:
    return str(Path(_default_checkpoint()).parent)


# --- schema validation ---------------------------------------------------------------------------
def test_schemas_are_a_current_kubernetes_release():
    assert Version(KUBERNETES) >= Version("1.30"), KUBERNETES
    kinds = {d["kind"] for _, d in _documents()}
    assert kinds >= {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    }


@pytest.mark.parametrize(
    "doc", [d for _, d in _documents()], ids=[_doc_id(*d) for d in _documents()]
)
def test_manifest_validates_strictly(doc):
    assert _validate(doc) == k8s.major_minor(KUBERNETES)


def _rename(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


# One broken field each; the schema must refuse every one.
MUTATIONS = {
    "misspelled readinessProbe": (
        "Deployment",
        lambda d: _rename(_container(d), "readinessProbe", "readinesProbe"),
    ),
    "containerPort as a string": (
        "Deployment",
        lambda d: _container(d)["ports"][0].update(containerPort="8000"),
    ),
    "runAsUser as a name": (
        "Deployment",
        lambda d: _pod(d)["securityContext"].update(runAsUser="bert"),
    ),
    "preStop sleep without seconds": (
        "Deployment",
        lambda d: _container(d)["lifecycle"]["preStop"].update(sleep={}),
    ),
    "unknown Job field": ("Job", lambda d: _rename(d["spec"], "completionMode", "completionsMode")),
    "minReplicas as a string": (
        "HorizontalPodAutoscaler",
        lambda d: d["spec"].update(minReplicas="2"),
    ),
    "misspelled kind": ("PodDisruptionBudget", lambda d: d.update(kind="PodDisruptionBudge")),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_broken_field_fails_validation(mutation):
    kind, mutate = MUTATIONS[mutation]
    doc = _one(kind)
    mutate(doc)
    with pytest.raises((k8s.ValidationError, k8s.SchemaNotFoundError)):
        _validate(doc)


# --- the API: Dockerfile, ServeConfig and bert-serve ---------------------------------------------
def _routes() -> set[str]:
    """Every GET path the app's routers declare (prefix + path), read from app/routes/*.py."""
    paths = set()
    for path in (ROOT / "app" / "routes").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        prefix = re.search(r"APIRouter\([^)]*prefix=\"([^\"]*)\"", text)
        for route in re.findall(r"@router\.get\(\s*\"([^\"]*)\"", text):
            paths.add((prefix.group(1) if prefix else "") + route)
    return paths


def test_api_port_matches_the_dockerfile_and_the_service():
    exposed = set(re.findall(r"^EXPOSE\s+(\d+)", _stage("api"), re.M))
    assert len(exposed) == 1, f"Dockerfile EXPOSE: {exposed}"
    port = int(exposed.pop())
    deploy, service = _one("Deployment"), _one("Service", "bertserve-api")
    api = _container(deploy, "api")
    named = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert named == {"http": port}
    assert api["args"][api["args"].index("--port") + 1] == str(port)
    assert [named.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]] == [port]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert named.get(api[probe]["httpGet"]["port"]) == port, probe
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def test_probes_hit_the_readiness_and_liveness_routes():
    api = _container(_one("Deployment"), "api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/health"  # 503 while loading or draining
    assert api["livenessProbe"]["httpGet"]["path"] == "/live"
    routes = _routes()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in routes, f"{probe}: no such route in app/routes/"


def test_api_settings_are_serve_config_fields_and_valid_together():
    deploy, config_map = _one("Deployment"), _one("ConfigMap", "bertserve-api")
    api = _container(deploy, "api")
    assert api["image"] == "bertserve-api:latest"
    assert [e["configMapRef"]["name"] for e in api["envFrom"]] == [config_map["metadata"]["name"]]
    settings = {**config_map["data"], **_env(api)}
    fields = {}
    for key, value in settings.items():
        assert key.startswith(ENV_PREFIX), key
        field = key.removeprefix(ENV_PREFIX).lower()
        assert field in ServeConfig.model_fields, f"{key} is not a ServeConfig setting"
        fields[field] = value
    # bert-serve's own parser accepts the arguments (the image's ENTRYPOINT is bert-serve)...
    assert json.loads(_last("ENTRYPOINT", "api")) == ["bert-serve"]
    known = {s for a in serve_parser()._actions for s in a.option_strings}
    assert {a for a in api["args"] if a.startswith("--")} <= known
    flags = vars(serve_parser().parse_args(api["args"]))
    # ...and flags plus environment make a valid ServeConfig (types, cross-field rules).
    config = ServeConfig.load(flags.pop("config", None), **{**fields, **flags})
    assert config.watch and str(config.models_root) == _models_root()
    # torch's default thread count is the node's cores: it must be pinned below the CPU limit.
    cpu_limit = _cores(api["resources"]["limits"]["cpu"])
    assert config.torch_threads is not None and config.torch_threads < cpu_limit


def test_admin_token_comes_from_a_secret_file():
    deploy = _one("Deployment")
    api = _container(deploy, "api")
    token_file = Path(_env(api)["BERT_SERVE_ADMIN_TOKEN_FILE"])
    assert "BERT_SERVE_ADMIN_TOKEN" not in _env(api)  # never the token itself in the manifest
    mount = next(m for m in api["volumeMounts"] if m["mountPath"] == str(token_file.parent))
    volume = next(v for v in _pod(deploy)["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == "bertserve-admin"
    assert [i["path"] for i in volume["secret"]["items"]] == [token_file.name]
    assert not any(d["kind"] == "Secret" for _, d in _documents()), "no secret in the repository"


def test_no_service_link_variable_can_look_like_a_setting():
    # A Service named bert-serve-x would inject BERT_SERVE_X_PORT=tcp://..., an unknown setting
    # that stops the server; the pods turn service links off, and no Service is named so anyway.
    for _, doc in _documents():
        if doc["kind"] in ("Deployment", "Job"):
            assert _pod(doc)["enableServiceLinks"] is False
        if doc["kind"] == "Service":
            assert not doc["metadata"]["name"].upper().replace("-", "_").startswith(ENV_PREFIX)


def test_grace_period_covers_the_prestop_pause_and_the_drain():
    deploy, config_map = _one("Deployment"), _one("ConfigMap", "bertserve-api")
    api = _container(deploy, "api")
    pause = api["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(
        config_map["data"].get(
            "BERT_SERVE_GRACEFUL_SHUTDOWN_S",
            ServeConfig.model_fields["graceful_shutdown_s"].default,
        )
    )
    grace = _pod(deploy)["terminationGracePeriodSeconds"]
    assert pause >= 5, "endpoints need a few seconds to drop the pod before SIGTERM"
    assert grace > pause + drain, f"SIGKILL at {grace}s cuts a {pause}s pause + {drain}s drain"


def test_autoscaler_disruption_budget_and_service_target_the_api_pods():
    deploy = _one("Deployment")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    hpa, pdb = _one("HorizontalPodAutoscaler"), _one("PodDisruptionBudget")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deploy["metadata"]["name"])
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _one("Service", "bertserve-api")["spec"]["selector"].items() <= labels.items()
    # One pod may be evicted at a time and at least one more is always there to serve.
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"] >= 1
    # CPU utilisation is measured against the request: every container must have one.
    assert all("cpu" in c["resources"]["requests"] for c in _pod(deploy)["containers"])


# --- both workloads: user, filesystem, volume ----------------------------------------------------
@pytest.mark.parametrize("kind, stage", [("Deployment", "api"), ("Job", "trainer")])
def test_pods_run_as_the_image_user_on_a_read_only_root(kind, stage):
    uid, gid = _image_ids()
    assert _last("USER", stage) in ("bert", str(uid))
    assert re.search(rf"useradd\b[^\n]*--uid\s+{uid}\b[^\n]*\bbert\b", _dockerfile())
    pod = _pod(_one(kind))
    ctx = pod["securityContext"]
    assert (ctx["runAsNonRoot"], ctx["runAsUser"], ctx["runAsGroup"], ctx["fsGroup"]) == (
        True,
        uid,
        gid,
        gid,
    )
    assert pod["automountServiceAccountToken"] is False
    writable = {
        m["mountPath"]
        for c in pod["containers"]
        for m in c["volumeMounts"]
        for v in pod["volumes"]
        if v["name"] == m["name"] and "emptyDir" in v
    }
    assert "/tmp" in writable
    mpl = re.search(r"MPLCONFIGDIR=(\S+)", _stage(stage))
    if mpl:  # matplotlib writes its cache there; it must be on a writable volume
        assert any(Path(mpl.group(1)).is_relative_to(w) for w in writable), mpl.group(1)
    for container in pod.get("initContainers", []) + pod["containers"]:
        sec = container["securityContext"]
        assert sec["readOnlyRootFilesystem"] is True, container["name"]
        assert sec["allowPrivilegeEscalation"] is False, container["name"]
        assert sec["capabilities"]["drop"] == ["ALL"], container["name"]
        assert {"requests", "limits"} <= container["resources"].keys(), container["name"]


def test_models_volume_is_shared_and_mounted_where_the_image_keeps_models():
    pvc = _one("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # API replicas and trainer pods
    root = _models_root()
    assert re.search(rf"{re.escape(root)}/current\b", _dockerfile()), "the image's pointer"
    for kind, read_only in (("Deployment", True), ("Job", False)):
        pod = _pod(_one(kind))
        claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
        assert claim["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == claim["name"])
        assert mount["mountPath"] == root, kind
        assert mount.get("readOnly", False) is read_only, kind
    # The API's init container seeds a new volume from the image's own default checkpoint.
    seed = _pod(_one("Deployment"))["initContainers"][0]
    assert seed["image"] == _container(_one("Deployment"), "api")["image"]
    (seed_mount,) = seed["volumeMounts"]
    assert seed_mount["mountPath"] != root, "the seed must see the image's own /models"
    script = seed["command"][-1]
    assert f"cp -R {_default_checkpoint()} " in script
    assert f"cp {root}/current " in script
    assert f'mv -f "$tmp.current" {seed_mount["mountPath"]}/current' in script


# --- the training Job: torchrun across pods, bert-train, publish ---------------------------------
def _torchrun_flags() -> set[str]:
    """torchrun's option strings, read from torch/distributed/run.py (importing torch is slow)."""
    spec = importlib.util.find_spec("torch")
    assert spec and spec.submodule_search_locations
    source = Path(spec.submodule_search_locations[0], "distributed", "run.py").read_text()
    flags = set()
    for group in re.findall(r"add_argument\(\s*((?:\"-[\w-]+\",\s*)+)", source):
        flags |= set(re.findall(r"\"(-[\w-]+)\"", group))
    assert {"--nnodes", "--node-rank", "--master-addr", "-m"} <= flags
    return flags


def _job_command() -> tuple[dict[str, str], list[str], str]:
    """(torchrun options, bert-train arguments with the Job's args as "$@", the whole script)."""
    trainer = _container(_one("Job"), "trainer")
    assert trainer["command"][:2] == ["/bin/sh", "-c"]
    script = trainer["command"][2]
    line = next(
        ln for ln in script.replace("\\\n", " ").splitlines() if ln.strip().startswith("torchrun ")
    )
    words = shlex.split(line)
    module = words.index("-m")
    options = dict(w.split("=", 1) for w in words[1:module])
    assert words[module + 1] == "training.pretrain.cli"
    train_args = words[module + 2 :]
    at = train_args.index("$@")
    return options, train_args[:at] + trainer["args"] + train_args[at + 1 :], script


def test_training_job_is_an_indexed_job_rendezvousing_on_pod_zero():
    job, service = _one("Job"), _one("Service", "bertserve-train")
    spec, pod = job["spec"], _pod(job)
    trainer = _container(job, "trainer")
    env = _env(trainer)
    options, _, _ = _job_command()
    assert set(options) <= _torchrun_flags(), set(options) - _torchrun_flags()
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["NNODES"])
    assert int(env["NNODES"]) >= 2, "several pods"
    assert options["--nnodes"] == "$NNODES" and options["--nproc-per-node"] == "$NPROC_PER_NODE"
    assert options["--node-rank"] == "$JOB_COMPLETION_INDEX"  # set by the Job controller
    assert int(env["NPROC_PER_NODE"]) <= _cores(trainer["resources"]["requests"]["cpu"])
    # Pod 0's stable name: <job>-0.<subdomain>, published by the headless Service.
    assert options["--master-addr"] == "$RDZV_HOST"
    assert env["RDZV_HOST"] == f"$(JOB_NAME)-0.{pod['subdomain']}"
    job_name = next(e for e in trainer["env"] if e["name"] == "JOB_NAME")["valueFrom"]
    assert job_name["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    assert service["metadata"]["name"] == pod["subdomain"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert (
        service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    )
    assert [p["port"] for p in service["spec"]["ports"]] == [int(options["--master-port"])]
    # A lost pod fails the whole group at once; a hang ends at the deadline.
    assert spec["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert job["metadata"]["generateName"] and "name" not in job["metadata"]
    assert trainer["image"] == "bertserve-trainer:latest"


def test_training_job_runs_bert_train_with_real_flags_and_data():
    job = _one("Job")
    _, args, _ = _job_command()
    parsed, extra = train_parser().parse_known_args(args)
    overrides = split_overrides(extra)
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    # The config's train section with the overrides applied is a valid TrainConfig.
    config = yaml.safe_load((ROOT / parsed.config).read_text(encoding="utf-8"))
    train = dict(config.get("train") or {})
    for key, value in overrides:
        section, _, name = key.partition(".")
        assert section == "train" and name in train_fields, f"--{key}"
        train[name] = value if train_fields[name].type in ("str", str) else yaml.safe_load(value)
    train["time_budget_minutes"] = parsed.time_budget
    cfg = TrainConfig.from_dict(train)
    assert cfg.cache_dir.startswith("$models/"), "the cache is shared: rank 0 fills it for all"
    assert parsed.output_dir == "$run_dir"
    assert 'run_dir="$models/runs/$RUN_NAME"' in _job_command()[2]
    assert job["spec"]["activeDeadlineSeconds"] > 60 * cfg.time_budget_minutes
    # Paths are relative to the image's WORKDIR, into which the Dockerfile copies them.
    assert _last("WORKDIR", "trainer") == "/app"
    for rel in (*parsed.corpus, *parsed.valid, parsed.config):
        assert (ROOT / rel).is_file(), rel
        top = rel.split("/")[0]
        assert re.search(rf"^COPY\s+{top}/\s+{top}/", _stage("trainer"), re.M), top
    # The script's default models root is the Dockerfile's (MODELS_ROOT only for rehearsals).
    assert f'models="${{MODELS_ROOT:-{_models_root()}}}"' in _job_command()[2]


def test_only_pod_zero_publishes_and_the_pointer_moves_by_rename():
    _, _, script = _job_command()
    lines = [ln.strip() for ln in script.splitlines()]
    torchrun = next(i for i, ln in enumerate(lines) if ln.startswith("torchrun "))
    guard = lines.index('if [ "$JOB_COMPLETION_INDEX" != 0 ]; then exit 0; fi')
    publish = next(i for i, ln in enumerate(lines) if ln.startswith("cp -R "))
    assert torchrun < guard < publish
    assert 'test -f "$run_dir/final/model.safetensors"' in lines[guard:publish]
    # The same atomic steps as deploy/train-and-publish.sh: copy, rename into place, rename
    # the pointer.
    assert lines[-3:-1] == [
        'printf \'%s\\n\' "$RUN_NAME" > "$models/.current.tmp-$RUN_NAME"',
        'mv "$models/.current.tmp-$RUN_NAME" "$models/current"',
    ]
    compose_script = (ROOT / "deploy" / "train-and-publish.sh").read_text(encoding="utf-8")
    assert 'mv "$MODELS_ROOT/.current.tmp" "$MODELS_ROOT/current"' in compose_script
    assert "set -eu" in lines
