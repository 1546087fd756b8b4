"""HTTP tests of the model server against a tiny seeded checkpoint (TestClient, lifespan on).

Parity: /fill-mask equals transformers' fill-mask pipeline and /embed equals mean pooling of
transformers' BertModel on the same files.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from app_testing import asgi_post_scope, build_checkpoint, serve_config
from app_testing import error_of as _error
from fastapi.testclient import TestClient

from app.main import create_app

TEXTS = [
    "the dog [MASK] here .",
    "an entity that has [MASK] existence .",
    "a [MASK] concept formed by extracting [MASK] features",
    "[MASK]",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("models") / "tiny", seed=1)


@pytest.fixture(scope="module")
def client(checkpoint):
    """A server at the suite's precision (fp32, or what a CI pass forces): for assertions that
    hold under every precision."""
    with TestClient(create_app(serve_config(checkpoint))) as c:
        yield c


@pytest.fixture(scope="module")
def fp32_client(checkpoint):
    """A server pinned to fp32: for answers compared with transformers' fp32 ones to 1e-5."""
    with TestClient(create_app(serve_config(checkpoint, precision="fp32"))) as c:
        yield c


@pytest.fixture(scope="module")
def hf(checkpoint):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model = transformers.BertForMaskedLM.from_pretrained(checkpoint).eval()
    return tok, model


# --- parity with transformers ------------------------------------------------------------------


def test_fill_mask_matches_transformers_pipeline(fp32_client, hf):
    from transformers import pipeline

    hf_tok, hf_model = hf
    ours_vocab = fp32_client.get("/info").json()["model"]["vocab_size"]
    assert len(hf_tok) == ours_vocab == hf_model.config.vocab_size
    pipe = pipeline("fill-mask", model=hf_model, tokenizer=hf_tok, device="cpu")
    r = fp32_client.post("/fill-mask", json={"inputs": TEXTS, "top_k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == r.headers["x-model-version"]
    for text, ours in zip(TEXTS, body["predictions"], strict=True):
        theirs = pipe(text, top_k=5)
        if isinstance(theirs[0], dict):  # one mask: the pipeline drops a nesting level
            theirs = [theirs]
        assert len(ours) == len(theirs) == text.count("[MASK]")
        for our_mask, their_mask in zip(ours, theirs, strict=True):
            assert [c["token"] for c in our_mask] == [c["token"] for c in their_mask]
            assert [c["token_str"] for c in our_mask] == [c["token_str"] for c in their_mask]
            torch.testing.assert_close(
                torch.tensor([c["score"] for c in our_mask]),
                torch.tensor([c["score"] for c in their_mask]),
                atol=1e-5,
                rtol=0,
            )
    # The model is not uniform: the test compares peaked distributions.
    assert body["predictions"][0][0][0]["score"] > 5 / ours_vocab


def test_fill_mask_targets_match_transformers_pipeline(fp32_client, hf):
    from transformers import pipeline

    hf_tok, hf_model = hf
    pipe = pipeline("fill-mask", model=hf_model, tokenizer=hf_tok, device="cpu")
    targets = ["the", "a", "of", "that"]
    r = fp32_client.post("/fill-mask", json={"inputs": TEXTS[0], "targets": targets, "top_k": 3})
    assert r.status_code == 200, r.text
    ours = r.json()["predictions"][0][0]
    theirs = pipe(TEXTS[0], targets=targets, top_k=3)
    assert [c["token"] for c in ours] == [c["token"] for c in theirs]
    torch.testing.assert_close(
        torch.tensor([c["score"] for c in ours]),
        torch.tensor([c["score"] for c in theirs]),
        atol=1e-5,
        rtol=0,
    )
    # top_k larger than the targets gives every target once, best first.
    r = fp32_client.post(
        "/fill-mask", json={"inputs": TEXTS[0], "targets": ["the", "a"], "top_k": 9}
    )
    cands = r.json()["predictions"][0][0]
    assert sorted(c["token_str"] for c in cands) == ["a", "the"]
    assert cands[0]["score"] >= cands[1]["score"]


def test_embed_matches_hf_mean_pooling(fp32_client, hf):
    hf_tok, hf_model = hf
    texts = ["an entity that has physical existence .", "abstraction", "a general concept"]
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf_model.bert(**enc).last_hidden_state  # (B, T, H)
    m = enc["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * m).sum(1) / m.sum(1)
    cls = hidden[:, 0]

    def embed(**kw):
        r = fp32_client.post("/embed", json={"inputs": texts, **kw})
        assert r.status_code == 200, r.text
        assert r.headers["x-model-version"]
        return torch.tensor(r.json())

    torch.testing.assert_close(embed(normalize=False), mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        embed(), torch.nn.functional.normalize(mean, dim=-1), atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(embed(normalize=False, pooling="cls"), cls, atol=1e-5, rtol=1e-4)
    # A single string gives a list of one embedding, like TEI.
    single = fp32_client.post("/embed", json={"inputs": texts[1], "normalize": False}).json()
    torch.testing.assert_close(torch.tensor(single), mean[1:2], atol=1e-5, rtol=1e-4)


# --- response shapes -------------------------------------------------------------------------


def test_fill_mask_shape_sequence_and_multiple_masks(client):
    r = client.post("/fill-mask", json={"inputs": "The Dog [MASK] here.", "top_k": 2})
    preds = r.json()["predictions"]
    assert len(preds) == 1 and len(preds[0]) == 1 and len(preds[0][0]) == 2  # input/mask/cand
    for c in preds[0][0]:
        assert set(c) == {"score", "token", "token_str", "sequence"}
        token = c["token_str"]
        expected = (
            "The Dog" + token[2:] + " here." if token.startswith("##") else f"The Dog {token} here."
        )
        assert c["sequence"] == expected  # the caller's text, only the mask replaced
    # Two masks are predicted independently; each sequence fills only its own mask.
    r = client.post("/fill-mask", json={"inputs": ["x [MASK] y [MASK] z"], "top_k": 1})
    first, second = r.json()["predictions"][0]
    assert first[0]["sequence"].endswith("y [MASK] z")
    assert second[0]["sequence"].startswith("x [MASK] y")
    # The same mask alone in the same position context gives the same candidates as in a batch
    # with other inputs (padding does not leak into results).
    solo = client.post("/fill-mask", json={"inputs": TEXTS[1]}).json()["predictions"][0]
    both = client.post("/fill-mask", json={"inputs": [TEXTS[2], TEXTS[1]]}).json()
    assert [c["token"] for c in both["predictions"][1][0]] == [c["token"] for c in solo[0]]


def test_truncation(client):
    long_text = "entity " * 100 + "[MASK]"
    _error(client.post("/fill-mask", json={"inputs": long_text}), 422, "Validation")
    # Truncating on the right cuts the mask off: still refused, with a reason.
    msg = _error(
        client.post("/fill-mask", json={"inputs": long_text, "truncate": True}), 422, "Validation"
    )
    assert "truncation" in msg
    r = client.post("/fill-mask", json={"inputs": "[MASK] " + "entity " * 100, "truncate": True})
    assert r.status_code == 200
    # /embed: truncate to the limit; left keeps the end of the text.
    _error(client.post("/embed", json={"inputs": long_text}), 422, "Validation")
    right = client.post("/embed", json={"inputs": long_text, "truncate": True})
    left = client.post(
        "/embed",
        json={"inputs": long_text, "truncate": True, "truncation_direction": "Left"},
    )
    assert right.status_code == left.status_code == 200
    assert right.json() != left.json()


def test_openai_embeddings(client):
    r = client.post("/v1/embeddings", json={"input": ["a general concept", "entity"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == r.headers["x-model-version"]
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    vec = np.array(body["data"][0]["embedding"])
    assert abs(np.linalg.norm(vec) - 1) < 1e-5
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4
    tei = client.post("/embed", json={"inputs": "a general concept"}).json()[0]
    np.testing.assert_allclose(vec, tei, atol=1e-6)
    r = client.post(
        "/v1/embeddings",
        json={"input": "a general concept", "model": "x", "encoding_format": "base64"},
    )
    decoded = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, vec, atol=1e-6)
    # dimensions: the first 7 values, normalized again (OpenAI's Matryoshka truncation).
    raw = np.array(client.post("/embed", json={"inputs": "x", "normalize": False}).json()[0])
    cut = client.post("/v1/embeddings", json={"input": "x", "dimensions": 7}).json()
    np.testing.assert_allclose(
        cut["data"][0]["embedding"], raw[:7] / np.linalg.norm(raw[:7]), atol=1e-6
    )
    _error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 33}), 400, "Unsupported")
    _error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 0}), 422, "Validation")
    _error(client.post("/v1/embeddings", json={"input": [1, 2]}), 422, "Validation")


def test_tokenize_gives_ids_and_offsets(client):
    text = "Hello [MASK] world"
    r = client.post("/tokenize", json={"inputs": text})
    assert r.status_code == 200
    tokens = r.json()[0]
    assert tokens[0]["token"] == "[CLS]" and tokens[0]["start"] is None
    assert tokens[-1]["token"] == "[SEP]"
    mask = next(t for t in tokens if t["token"] == "[MASK]")
    assert mask["special"] and text[mask["start"] : mask["stop"]] == "[MASK]"
    for t in tokens[1:-1]:
        assert t["text"] == text[t["start"] : t["stop"]]
    assert "".join(t["text"] for t in tokens if t["start"] is not None and t["start"] < 6) == (
        "Hello"
    )
    bare = client.post("/tokenize", json={"inputs": [text], "add_special_tokens": False}).json()
    assert [t["id"] for t in bare[0]] == [t["id"] for t in tokens[1:-1]]


# --- operations --------------------------------------------------------------------------------


def test_health_live_info_metrics_and_docs(client, checkpoint):
    assert client.get("/live").json() == {"status": "alive"}
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = client.get("/info").json()
    model = info["model"]
    import hashlib

    sha = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert model["sha256"] == sha and model["version"] == f"tiny-{sha[:12]}"
    assert health.headers["x-model-version"] == model["version"]
    assert model["config"]["hidden_size"] == 32
    caps = model["capabilities"]
    assert caps["fill_mask"] is True and caps["embed"] is True and caps["tokenize"] is True
    assert (caps["pooling"], caps["normalize"], caps["max_tokens"]) == ("mean", True, 64)
    assert caps["kind"] == "BertForMaskedLM" and caps["sentence_transformers"] is False
    assert info["limits"]["max_client_batch"] == 8 and info["limits"]["max_input_tokens"] == 64
    assert info["batching"]["enabled"] and info["batching"]["max_batch_size"] == 16
    assert info["admin_api"] is False
    client.post("/fill-mask", json={"inputs": TEXTS[0]})
    text = client.get("/metrics").text
    precision = model["precision"]["effective"]
    assert precision == client.app.state.serve.config.precision  # pinned: fp32 or a CI pass's
    labels = (
        f'kind="BertForMaskedLM",num_labels="0",precision="{precision}",'
        f'sha256="{sha}",version="tiny-{sha[:12]}"'
    )
    assert f"bert_model_info{{{labels}}} 1.0" in text
    assert 'bert_requests_total{endpoint="/fill-mask",status="200"}' in text
    for name in (
        "bert_request_duration_seconds_bucket",
        "bert_queue_duration_seconds_bucket",
        "bert_inference_duration_seconds_bucket",
        "bert_queue_size",
        "bert_batch_size_bucket",
        "bert_batch_tokens_bucket",
        "bert_request_stage_seconds_bucket",
        "bert_event_loop_lag_seconds_bucket",
        'bert_dropped_requests_total{reason="deadline"}',
        'bert_model_reloads_total{result="failure"}',
    ):
        assert name in text, name
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/fill-mask", "/embed", "/v1/embeddings", "/tokenize"):
        assert p in paths
    assert set(paths["/"]) == {"post"}  # the Inference API route; GET / is the page
    from typing import get_args

    from app.schemas import Pooling
    from model import POOLINGS

    assert get_args(Pooling) == POOLINGS  # the schema's poolings are the model's
    assert "/admin/reload" not in paths  # no admin token configured: not mounted


def _metric_sums(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of every ``*_sum`` and ``*_count`` sample."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if "_sum" in key or "_count" in key:
            out[key] = float(value)
    return out


def test_stage_timings_add_up_to_the_request(client):
    """Each inference request is timed stage by stage (parse, tokenize, queue, compute, respond),
    and the stages cover the request's duration: the per-stage histograms say where time goes."""
    from app.metrics import STAGES

    client.post("/fill-mask", json={"inputs": TEXTS[0]})  # warm
    before = _metric_sums(client.get("/metrics").text)
    assert client.post("/fill-mask", json={"inputs": TEXTS[1]}).status_code == 200
    after = _metric_sums(client.get("/metrics").text)

    def delta(key: str) -> float:
        return after[key] - before.get(key, 0.0)

    stages = {s: delta(f'bert_request_stage_seconds_sum{{stage="{s}"}}') for s in STAGES}
    counts = {s: delta(f'bert_request_stage_seconds_count{{stage="{s}"}}') for s in STAGES}
    assert counts == dict.fromkeys(STAGES, 1.0)
    assert all(v >= 0 for v in stages.values()) and stages["compute"] > 0
    total = delta('bert_request_duration_seconds_sum{endpoint="/fill-mask"}')
    # The stages end at the response start; the total also covers sending the body.
    assert 0.5 * total <= sum(stages.values()) <= total + 1e-3
    # A request without compute (tokenize) marks no respond stage, and probes mark nothing.
    client.post("/tokenize", json={"inputs": TEXTS[0]})
    again = _metric_sums(client.get("/metrics").text)
    assert (
        again['bert_request_stage_seconds_count{stage="respond"}']
        == after['bert_request_stage_seconds_count{stage="respond"}']
    )
    assert again["bert_event_loop_lag_seconds_count"] >= 0


def test_short_texts_are_tokenized_inline_long_ones_in_the_tokenizer_thread(client, monkeypatch):
    from app.service import INLINE_TOKENIZE_CHARS

    state = client.app.state.serve
    pool = state._tokenizer_threads
    submitted = []

    def spy(fn, *args, **kwargs):
        submitted.append(fn)
        return type(pool).submit(pool, fn, *args, **kwargs)

    monkeypatch.setattr(pool, "submit", spy)
    short = client.post("/fill-mask", json={"inputs": TEXTS[0]})
    assert short.status_code == 200 and submitted == []
    long_text = "[MASK] " + "word " * (INLINE_TOKENIZE_CHARS // 5 + 1)
    long = client.post("/fill-mask", json={"inputs": long_text, "truncate": True})
    assert long.status_code == 200 and len(submitted) == 1
    # Both ways give the same answer for the same text.
    monkeypatch.setattr("app.service.INLINE_TOKENIZE_CHARS", 0)
    threaded = client.post("/fill-mask", json={"inputs": TEXTS[0]})
    assert len(submitted) == 2 and threaded.json() == short.json()


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/fill-mask", {"inputs": "no mask here"}, "no [MASK]"),
        ("/fill-mask", {"inputs": ""}, "empty"),
        ("/fill-mask", {"inputs": "   "}, "empty"),
        ("/fill-mask", {"inputs": []}, "empty"),
        ("/fill-mask", {"inputs": "[MASK]", "top_k": 0}, "top_k"),
        ("/fill-mask", {"inputs": "[MASK]", "top_k": "five"}, "top_k"),
        ("/fill-mask", {"inputs": "[MASK]", "targets": ["zzzqqq"]}, "zzzqqq"),
        ("/fill-mask", {"inputs": "[MASK]", "targets": []}, "targets"),
        ("/fill-mask", {"inputs": "[MASK]", "topk": 3}, "topk"),
        ("/fill-mask", {"inputs": 42}, "inputs"),
        ("/fill-mask", {}, "inputs"),
        ("/fill-mask", [1, 2], "body"),
        ("/embed", {"inputs": ["ok", ""]}, "inputs[1]"),
        ("/embed", {"inputs": "ok", "pooling": "median"}, "pooling"),
        ("/embed", {"inputs": "ok", "prompt_name": "query"}, "prompt_name"),
        ("/tokenize", {"inputs": []}, "empty"),
    ],
)
def test_invalid_input_is_422_in_the_error_shape(client, path, body, fragment):
    msg = _error(client.post(path, json=body), 422, "Validation")
    assert fragment in msg


def test_malformed_json_and_unknown_routes_use_the_error_shape(client):
    r = client.post(
        "/fill-mask", content=b"{not json", headers={"content-type": "application/json"}
    )
    _error(r, 422, "Validation")
    _error(client.get("/nope"), 404, "NotFound")
    _error(client.get("/fill-mask"), 405, "MethodNotAllowed")


def test_no_model_loaded_is_503(checkpoint):
    app = create_app(serve_config(checkpoint))
    client = TestClient(app)  # no `with`: the lifespan never ran, nothing is loaded
    _error(client.post("/fill-mask", json={"inputs": "[MASK]"}), 503, "Unhealthy")
    _error(client.post("/embed", json={"inputs": "x"}), 503, "Unhealthy")
    _error(client.get("/health"), 503, "Unhealthy")
    assert client.get("/live").status_code == 200


def test_draining_turns_health_503(checkpoint):
    with TestClient(create_app(serve_config(checkpoint))) as client:
        assert client.get("/health").status_code == 200
        client.app.state.serve.draining = True
        msg = _error(client.get("/health"), 503, "Unhealthy")
        assert "shutting down" in msg


# --- disconnects (model thread gated; overload and deadlines: tests/reliability/) -----------


class _Gate:
    """Replaces Engine.run_batch with one that blocks the model thread until released."""

    def __init__(self, engine):
        self.engine = engine
        self.original = engine.run_batch
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = []

    def __enter__(self):
        def gated(jobs):
            self.calls.append(len(jobs))
            self.entered.set()
            assert self.release.wait(10)
            return self.original(jobs)

        self.engine.run_batch = gated
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.engine.run_batch = self.original


def test_disconnected_client_is_dropped_before_compute(checkpoint):
    """Drive the ASGI app directly: the client sends its body, then disconnects while queued."""
    config = serve_config(checkpoint, max_wait_ms=0)
    with TestClient(create_app(config)) as client, ThreadPoolExecutor(1) as pool:
        state = client.app.state.serve
        with _Gate(state.registry.current) as gate:
            busy = pool.submit(client.post, "/fill-mask", json={"inputs": TEXTS[0]})
            assert gate.entered.wait(10)

            async def disconnecting_request():
                body = json.dumps({"inputs": TEXTS[1]}).encode()
                gone = asyncio.Event()
                sent: list[dict] = []
                messages = [{"type": "http.request", "body": body, "more_body": False}]

                async def receive():
                    if messages:
                        return messages.pop(0)
                    await gone.wait()
                    return {"type": "http.disconnect"}

                async def send(message):
                    sent.append(message)

                scope = asgi_post_scope("/fill-mask")
                task = asyncio.ensure_future(client.app(scope, receive, send))
                while len(state.batcher) < 1:  # queued behind the busy batch
                    await asyncio.sleep(0.005)
                gone.set()
                await asyncio.wait_for(task, 10)
                return len(state.batcher), sent

            queued_after, _ = client.portal.call(disconnecting_request)
            assert queued_after == 1  # still in the deque, but its future is cancelled
            gate.release.set()
            assert busy.result().status_code == 200
        assert client.post("/fill-mask", json={"inputs": TEXTS[2]}).status_code == 200
        assert gate.calls == [1]  # only the busy request ran while gated
        text = client.get("/metrics").text
        assert 'bert_dropped_requests_total{reason="client_disconnected"} 1.0' in text


def test_batching_groups_concurrent_requests(checkpoint):
    config = serve_config(checkpoint, max_wait_ms=50, max_batch_size=16)
    with TestClient(create_app(config)) as client, ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(client.post, "/fill-mask", json={"inputs": TEXTS[i % 4]}) for i in range(8)
        ]
        results = [f.result() for f in futures]
        assert all(r.status_code == 200 for r in results)
        batches = client.app.state.serve.batcher.batches_run
        assert batches < 8  # several requests shared a forward pass
    with TestClient(create_app(serve_config(checkpoint, batching=False))) as client:
        assert client.get("/info").json()["batching"]["max_batch_size"] == 1
        r = client.post("/fill-mask", json={"inputs": TEXTS[:3]})  # one request: one batch
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3


# --- robustness --------------------------------------------------------------------------------


def test_huggingface_directory_is_served_as_is(client, hf, tmp_path):
    """transformers' own save_pretrained output + vocab.txt only (no tokenizer_config.json)."""
    import shutil

    _, hf_model = hf
    hf_dir = tmp_path / "hf-bert"
    hf_model.save_pretrained(hf_dir)
    shutil.copy(client.app.state.serve.registry.current.path / "vocab.txt", hf_dir)
    assert not (hf_dir / "tokenizer_config.json").exists()
    with TestClient(create_app(serve_config(hf_dir))) as hf_client:
        ours = hf_client.post("/fill-mask", json={"inputs": TEXTS}).json()["predictions"]
    reference = client.post("/fill-mask", json={"inputs": TEXTS}).json()["predictions"]
    for a, b in zip(ours, reference, strict=True):
        for ma, mb in zip(a, b, strict=True):
            assert [c["token"] for c in ma] == [c["token"] for c in mb]
            torch.testing.assert_close(
                torch.tensor([c["score"] for c in ma]),
                torch.tensor([c["score"] for c in mb]),
                atol=1e-6,
                rtol=0,
            )


def test_lone_surrogates_are_422_not_500(client):
    body = b'{"inputs": "\\ud800 [MASK]"}'
    r = client.post("/fill-mask", content=body, headers={"content-type": "application/json"})
    assert "Unicode" in _error(r, 422, "Validation")
    body = b'{"inputs": "[MASK]", "targets": ["\\udfff"]}'
    r = client.post("/fill-mask", content=body, headers={"content-type": "application/json"})
    _error(r, 422, "Validation")


def test_startup_fails_clearly_on_a_bad_checkpoint(tmp_path):
    from app.errors import CheckpointLoadError

    (tmp_path / "empty").mkdir()
    app = create_app(serve_config(tmp_path / "empty"))
    with pytest.raises(CheckpointLoadError, match=r"no config\.json"), TestClient(app):
        pass
    app = create_app(serve_config(tmp_path / "missing"))
    with pytest.raises(CheckpointLoadError, match="not found"), TestClient(app):
        pass
