"""Hot-swap: checkpoint name resolution, refusal of bad checkpoints, watch mode, and swaps under
concurrent load with zero failed requests, between two MLM models and between an MLM model and a
text classifier or a reranker (admin auth: tests/reliability/test_admin_auth.py)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from app_testing import build_checkpoint, serve_config
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from app.jobs import ClassifyJob, FillMaskJob
from app.loading import load_engine
from app.main import create_app

TOKEN = "s3cret-admin-token-0123456789"
PROBE = "an entity that has [MASK] existence ."


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """models/{a,b,clf,rr,bad,nan,pickled,link-to-b}, plus a valid checkpoint outside the root."""
    base = tmp_path_factory.mktemp("reload")
    models = base / "models"
    a = build_checkpoint(models / "a", seed=1)
    build_checkpoint(models / "b", seed=2)
    build_checkpoint(models / "clf", seed=4, labels=("neg", "pos", "neutral"))
    build_checkpoint(models / "rr", seed=5, labels=("score",))  # one label: a reranker
    bad = models / "bad"
    shutil.copytree(a, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    nan = models / "nan"
    shutil.copytree(a, nan)
    tensors = load_file(nan / "model.safetensors")
    key = next(k for k in tensors if k.endswith("intermediate.dense.weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, nan / "model.safetensors")
    pickled = models / "pickled"
    shutil.copytree(a, pickled)
    os.rename(pickled / "model.safetensors", pickled / "pytorch_model.bin")
    outside = build_checkpoint(base / "outside", seed=3)
    os.symlink(outside, models / "escape")
    os.symlink(models / "b", models / "link-to-b")
    token_file = base / "token"
    token_file.write_text(TOKEN + "\n")
    return models, token_file


def _config(root, **kw):
    models, token_file = root
    values = {"models_root": models, "admin_token_file": token_file}
    values.update(kw)
    return serve_config(kw.pop("checkpoint", models / "a"), **values)


def _reload(client, name, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post("/admin/reload", json={"checkpoint": name}, headers=headers)


def _version(client):
    return client.get("/info").json()["model"]["version"]


@pytest.fixture(scope="module")
def expected(root):
    """The top candidate for PROBE per model version, computed outside the server."""
    models, _ = root
    out = {}
    for name in ("a", "b"):
        engine = load_engine(models / name, max_input_tokens=64)
        job = FillMaskJob(inputs=engine.encode_fill_mask([PROBE], truncate=False), top_k=1)
        out[engine.version] = engine.run_batch([job])[0][0][0][0][0]
    assert len(set(out.values())) == 2  # the two models disagree, so answers identify them
    return out


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("../a", 422),
        ("/etc", 422),
        (".hidden", 422),
        ("a/../b", 422),
        ("", 422),
        ("escape", 422),  # a symlink out of the models root
        ("missing", 404),
        ("bad", 422),  # truncated safetensors
        ("nan", 422),  # non-finite weights
        ("pickled", 422),  # only pytorch_model.bin: never unpickled by the server
    ],
)
def test_bad_names_and_checkpoints_are_refused_and_old_model_keeps_serving(root, name, status):
    with TestClient(create_app(_config(root))) as client:
        before = _version(client)
        r = _reload(client, name)
        assert r.status_code == status, r.text
        assert set(r.json()) == {"error", "error_type"}
        assert _version(client) == before
        assert client.post("/fill-mask", json={"inputs": PROBE}).status_code == 200
        if name == "pickled":
            assert "safetensors" in r.json()["error"]
        if name == "nan":
            assert "NaN" in r.json()["error"]


def test_reload_swaps_model_and_metrics(root, expected):
    with TestClient(create_app(_config(root))) as client:
        v_a = _version(client)
        r = _reload(client, "link-to-b")  # a symlink inside the root is fine
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["previous"] == v_a and body["model"] != v_a
        assert r.headers["x-model-version"] == body["model"]
        assert body["model"].startswith("b-")  # the resolved directory names the version
        fm = client.post("/fill-mask", json={"inputs": PROBE, "top_k": 1})
        assert fm.headers["x-model-version"] == fm.json()["model"] == body["model"]
        assert fm.json()["predictions"][0][0][0]["token"] == expected[body["model"]]
        assert _reload(client, "bad").status_code == 422
        text = client.get("/metrics").text
        assert 'bert_model_reloads_total{result="success"} 1.0' in text
        assert 'bert_model_reloads_total{result="failure"} 1.0' in text
        info_lines = [ln for ln in text.splitlines() if ln.startswith("bert_model_info{")]
        assert len(info_lines) == 1 and body["model"] in info_lines[0]


def test_hot_swap_under_concurrent_load(root, expected):
    """Clients hammer the server while it swaps a <-> b (and refuses a corrupt one): no request
    fails and every response's version header names the model whose answer it carries."""
    with TestClient(create_app(_config(root, max_wait_ms=1))) as client:
        stop = threading.Event()
        failures: list[str] = []
        seen: list[tuple[str, int]] = []

        def hammer(i: int) -> None:
            while not stop.is_set():
                if i % 3 == 2:
                    r = client.post("/embed", json={"inputs": ["a general concept", PROBE]})
                    if r.status_code != 200 or r.headers.get("x-model-version") not in expected:
                        failures.append(f"embed {r.status_code} {r.text[:100]}")
                    continue
                r = client.post("/fill-mask", json={"inputs": [PROBE, "x [MASK]"], "top_k": 1})
                if r.status_code != 200:
                    failures.append(f"fill-mask {r.status_code} {r.text[:100]}")
                    continue
                body = r.json()
                if r.headers["x-model-version"] != body["model"]:
                    failures.append("header and body disagree")
                seen.append((body["model"], body["predictions"][0][0][0]["token"]))

        with ThreadPoolExecutor(6) as pool:
            workers = [pool.submit(hammer, i) for i in range(6)]
            for name in ("b", "a", "bad", "b", "a"):
                time.sleep(0.15)
                r = _reload(client, name)
                assert r.status_code == (422 if name == "bad" else 200), r.text
            time.sleep(0.15)
            stop.set()
            for w in workers:
                w.result()
        assert not failures, failures[:5]
        versions = {v for v, _ in seen}
        assert versions == set(expected)  # both models answered during the run
        for version, token in seen:
            assert token == expected[version], version  # the header names the computing model


def _swap_under_load(root, routes, phases, **settings):
    """Six clients cycle through ``routes`` ((path, body)) while the server swaps to each model
    of ``phases`` in turn (name -> the (path, status) answers that prove it serves; a phase
    lasts until the new model has given each of them). Every answer must be 200 or 400 (no 5xx,
    no connection error). Returns (the first version, [(path, status, version, body)])."""
    with TestClient(create_app(_config(root, max_wait_ms=1, **settings))) as client:
        v_a = _version(client)
        stop = threading.Event()
        failures: list[str] = []
        seen: list[tuple[str, int, str, object]] = []  # (path, status, version header, body)

        def hammer(i: int) -> None:
            path, body = routes[i % len(routes)]
            while not stop.is_set():
                try:
                    r = client.post(path, json=body)
                except Exception as e:  # a connection-level failure
                    failures.append(f"{path} raised {e!r}")
                    continue
                if r.status_code >= 500 or r.status_code not in (200, 400):
                    failures.append(f"{path} {r.status_code} {r.text[:100]}")
                    continue
                seen.append((path, r.status_code, r.headers["x-model-version"], r.json()))

        def count(path: str, status: int, version: str) -> int:
            return sum(1 for p, s, v, _ in seen if (p, s, v) == (path, status, version))

        with ThreadPoolExecutor(6) as pool:
            workers = [pool.submit(hammer, i) for i in range(6)]
            for name, proofs in phases.items():
                r = _reload(client, name)
                assert r.status_code == 200, r.text
                version = r.json()["model"]
                before = [count(path, status, version) for path, status in proofs]
                deadline = time.monotonic() + 20
                while not failures and any(
                    count(path, status, version) == n
                    for (path, status), n in zip(proofs, before, strict=True)
                ):
                    assert time.monotonic() < deadline, f"{name} never gave {proofs}"
                    time.sleep(0.01)
            stop.set()
            for w in workers:
                w.result()
        assert not failures, failures[:5]
    return v_a, seen


def test_classifier_hot_swaps_in_and_out_under_load(root):
    """Clients hammer /predict, /fill-mask and /embed while the server swaps a -> clf -> a: no 5xx
    and no connection error. /predict answers 200 (the classifier's answer) while the
    classifier serves and 400 Unsupported while the MLM model does; /fill-mask the other way
    round; /embed always. Each phase lasts until the model it swapped in has answered its route."""
    models, _ = root
    clf = load_engine(models / "clf", max_input_tokens=64)
    job = ClassifyJob(inputs=clf.encode_many([PROBE], truncate=False))
    logits = clf.run_batch([job])[0][0]
    best = clf.capabilities.labels[logits.index(max(logits))]  # the classifier's answer to PROBE
    routes = [
        ("/predict", {"inputs": [PROBE, "a general concept"]}),
        ("/fill-mask", {"inputs": PROBE, "top_k": 1}),
        ("/embed", {"inputs": ["a general concept", PROBE]}),
    ]
    phases = {"clf": [("/predict", 200)], "a": [("/fill-mask", 200), ("/predict", 400)]}
    v_a, seen = _swap_under_load(root, routes, phases)
    v_clf = clf.version
    for path, status, version, body in seen:
        if status == 200 and path == "/predict":  # only the classifier classifies
            assert version == v_clf and body[0][0]["label"] == best
        elif status == 200 and path == "/fill-mask":
            assert version == v_a == body["model"]
        elif status == 400:  # the refusal names the model that refused
            assert body["error_type"] == "Unsupported", body
            refuser = v_a if path == "/predict" else v_clf
            assert path != "/embed" and refuser in body["error"], (path, body)
    assert any(p == "/embed" and s == 200 for p, s, _, _ in seen)


def test_reranker_hot_swaps_in_and_out_under_load(root):
    """The same with a cross-encoder: /rerank and /v1/rerank answer while the reranker serves
    (its scores), /embed_sparse while the MLM model does; each refuses (400) on the other."""
    models, _ = root
    rr = load_engine(models / "rr", max_input_tokens=64)
    job = ClassifyJob(
        inputs=rr.encode_pairs([("a query", PROBE)], truncate=False), function="sigmoid"
    )
    score = rr.run_batch([job])[0][0][0]
    routes = [
        ("/rerank", {"query": "a query", "texts": [PROBE]}),
        ("/v1/rerank", {"query": "a query", "documents": [PROBE]}),
        ("/embed_sparse", {"inputs": PROBE}),
    ]
    phases = {"rr": [("/rerank", 200), ("/embed_sparse", 400)], "a": [("/embed_sparse", 200)]}
    # Pinned: the scores are compared with the fp32 engine's to 1e-6.
    v_a, seen = _swap_under_load(root, routes, phases, precision="fp32")
    for path, status, version, body in seen:
        if status == 200 and path == "/rerank":
            assert version == rr.version and body[0]["score"] == pytest.approx(score, abs=1e-6)
        elif status == 200 and path == "/v1/rerank":
            assert version == rr.version == body["model"]
        elif status == 200:
            assert version == v_a and body[0]
        else:
            refuser = rr.version if path == "/embed_sparse" else v_a
            assert body["error_type"] == "Unsupported" and refuser in body["error"], body
    assert any(p == "/v1/rerank" and s == 200 for p, s, _, _ in seen)


def test_watch_mode_follows_the_current_pointer(root, expected):
    models, _ = root
    pointer = models / "current"
    pointer.write_text("a\n")
    config = serve_config(
        None,
        models_root=models,
        watch=True,
        watch_interval_s=0.05,
        admin_token_file=root[1],
    )
    try:
        with TestClient(create_app(config)) as client:
            v_a = _version(client)
            assert v_a.startswith("a-")
            pointer.write_text("b\n")
            deadline = time.monotonic() + 10
            while not _version(client).startswith("b-"):
                assert time.monotonic() < deadline, "the server did not follow the pointer"
                time.sleep(0.02)
            pointer.write_text("bad\n")  # refused; keeps serving b
            time.sleep(0.3)
            assert _version(client).startswith("b-")
            assert client.get("/health").status_code == 200
            r = _reload(client, "a")
            assert r.status_code == 409 and r.json()["error_type"] == "Conflict"
            text = client.get("/metrics").text
            assert 'bert_model_reloads_total{result="failure"} 1.0' in text
    finally:
        pointer.unlink()


def test_reload_loads_beside_the_old_model(root):
    """The old engine serves while the new one loads (the load runs off the event loop)."""
    with TestClient(create_app(_config(root))) as client:
        state = client.app.state.serve
        original_loader = state.registry._loader
        loading = threading.Event()
        proceed = threading.Event()

        def slow_loader(*args, **kwargs):
            loading.set()
            assert proceed.wait(10)
            return original_loader(*args, **kwargs)

        state.registry._loader = slow_loader
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_reload, client, "b")
            assert loading.wait(10)
            r = client.post("/fill-mask", json={"inputs": PROBE})
            assert r.status_code == 200 and r.json()["model"].startswith("a-")
            proceed.set()
            assert pending.result().status_code == 200
        assert _version(client).startswith("b-")
        assert torch.get_num_threads() == 1
