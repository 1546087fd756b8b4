"""Input limits at the boundary: exactly the maximum is served, one more is a clear 422.

Per request: inputs (``max_client_batch``), tokens per input (the configured ``max_input_tokens``
or the model's position embeddings, whichever is smaller), ``top_k`` (``max_top_k``) and
fill-mask targets (``max_targets``); ``truncate: true`` serves any length and cuts exactly at the
limit. The same for ``/predict`` on a classifier. Bodies: exactly ``max_body_bytes`` is read, one byte more is 413, by Content-Length and by
counting a chunked stream, and the server stops reading an endless body as soon as it passes the
limit (it never buffers it whole).

Deliberately not here: the 413/422 shapes of every route under random input (the schema fuzz
test), and truncation semantics such as left/right (tests/app/test_app.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from app_testing import asgi_post_scope, build_checkpoint, error_of, serve_config
from fastapi.testclient import TestClient
from gating import Recorder, tally
from helpers import metric_value

from app.main import create_app

MAX_CLIENT_BATCH = 8
MAX_TOP_K = 50
MAX_TARGETS = 5
MAX_BODY = 2048
MODEL_POSITIONS = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(
        tmp_path_factory.mktemp("limits") / "tiny", seed=11, max_positions=MODEL_POSITIONS
    )


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return build_checkpoint(
        tmp_path_factory.mktemp("limits-classifier") / "clf",
        seed=11,
        max_positions=MODEL_POSITIONS,
        labels=("a", "b", "c"),
    )


def _client(checkpoint, max_input_tokens: int) -> TestClient:
    config = serve_config(
        checkpoint,
        max_client_batch=MAX_CLIENT_BATCH,
        max_input_tokens=max_input_tokens,
        max_top_k=MAX_TOP_K,
        max_targets=MAX_TARGETS,
        max_body_bytes=MAX_BODY,
    )
    return TestClient(create_app(config))


def _with_tokens(client: TestClient, n: int, *, mask: bool) -> str:
    """A text of exactly ``n`` tokens with [CLS]/[SEP] ("entity" is one token of the vocab)."""
    words = ["[MASK]"] * mask + ["entity"] * (n - 2 - mask)
    text = " ".join(words)
    engine = client.app.state.serve.registry.current
    assert len(engine.tokenizer.encode(text).ids) == n
    return text


# (configured max_input_tokens, effective limit): the config's, or the model's 64 positions.
@pytest.mark.parametrize(("configured", "limit"), [(40, 40), (500, MODEL_POSITIONS)])
def test_tokens_per_input_at_the_limit(checkpoint, configured, limit, figures):
    with _client(checkpoint, configured) as client:
        rec = Recorder(client)
        assert client.get("/info").json()["limits"]["max_input_tokens"] == limit
        fill_at, fill_over = (_with_tokens(client, n, mask=True) for n in (limit, limit + 1))
        emb_at, emb_over = (_with_tokens(client, n, mask=False) for n in (limit, limit + 1))
        ok = [
            rec.post("/fill-mask", json={"inputs": fill_at}),
            rec.post("/embed", json={"inputs": emb_at}),
            rec.post("/v1/embeddings", json={"input": emb_at}),
        ]
        assert [r.status_code for r in ok] == [200, 200, 200], [r.text for r in ok]
        assert ok[2].json()["usage"]["prompt_tokens"] == limit
        over = [
            rec.post("/fill-mask", json={"inputs": fill_over}),
            rec.post("/embed", json={"inputs": emb_over}),
            rec.post("/v1/embeddings", json={"input": emb_over}),
        ]
        for r in over:
            msg = error_of(r, 422, "Validation")
            assert f"{limit + 1} tokens" in msg and f"limit of {limit}" in msg
        # truncate: true serves any length, cut exactly at the limit (right truncation keeps
        # the start, so the over-long text embeds exactly like its first `limit` tokens).
        way_over = _with_tokens(client, 3 * limit, mask=False)
        cut = rec.post("/embed", json={"inputs": [emb_over, way_over], "truncate": True})
        assert cut.status_code == 200
        for vector in cut.json():
            np.testing.assert_allclose(vector, ok[1].json()[0], atol=1e-5)
        long_fill = _with_tokens(client, 3 * limit, mask=True)
        fill_cut = rec.post("/fill-mask", json={"inputs": long_fill, "truncate": True})
        assert fill_cut.status_code == 200
        # Cut to the limit it is the same token sequence as `fill_at`: the same candidates.
        got, want = fill_cut.json()["predictions"][0][0], ok[0].json()["predictions"][0][0]
        assert [c["token"] for c in got] == [c["token"] for c in want]
        np.testing.assert_allclose([c["score"] for c in got], [c["score"] for c in want], atol=1e-6)
    figures.record(**rec.tally(rejected={422}), limit_tokens=limit)


@pytest.mark.parametrize(("configured", "limit"), [(40, 40), (500, MODEL_POSITIONS)])
def test_predict_at_the_limits(classifier, configured, limit, figures):
    n = MAX_CLIENT_BATCH
    with _client(classifier, configured) as client:
        rec = Recorder(client)
        at, over = (_with_tokens(client, k, mask=False) for k in (limit, limit + 1))
        ok = rec.post("/predict", json={"inputs": at, "raw_scores": True})
        assert ok.status_code == 200, ok.text
        msg = error_of(rec.post("/predict", json={"inputs": over}), 422, "Validation")
        assert f"{limit + 1} tokens" in msg and f"limit of {limit}" in msg
        # Cut to the limit, any longer text is the same token sequence as `at`: the same logits.
        way_over = _with_tokens(client, 3 * limit, mask=False)
        body = {"inputs": [over, way_over], "truncate": True, "raw_scores": True}
        cut = rec.post("/predict", json=body)
        assert cut.status_code == 200, cut.text
        want = {p["label"]: p["score"] for p in ok.json()}
        for ranking in cut.json():
            got = {p["label"]: p["score"] for p in ranking}
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-5)
        r = rec.post("/predict", json={"inputs": ["x y"] * n})
        assert r.status_code == 200 and len(r.json()) == n, r.text
        msg = error_of(rec.post("/predict", json={"inputs": ["x y"] * (n + 1)}), 422, "Validation")
        assert f"{n + 1} inputs" in msg and f"limit is {n}" in msg
    figures.record(**rec.tally(rejected={422}), limit_tokens=limit, max_client_batch=n)


def test_inputs_top_k_and_targets_at_the_limit(checkpoint, figures):
    n = MAX_CLIENT_BATCH
    with _client(checkpoint, 64) as client:
        rec = Recorder(client)
        routes = [
            ("/fill-mask", "inputs", "x [MASK] y"),
            ("/embed", "inputs", "x y"),
            ("/v1/embeddings", "input", "x y"),
            ("/tokenize", "inputs", "x y"),
            ("/embed_all", "inputs", "x y"),
            ("/embed_sparse", "inputs", "x y"),
        ]
        for path, key, text in routes:
            r = rec.post(path, json={key: [text] * n})
            assert r.status_code == 200, (path, r.text)
            body = r.json()
            items = (
                body["data"]
                if path == "/v1/embeddings"
                else (body["predictions"] if path == "/fill-mask" else body)
            )
            assert len(items) == n
            msg = error_of(rec.post(path, json={key: [text] * (n + 1)}), 422, "Validation")
            assert f"{n + 1} inputs" in msg and f"limit is {n}" in msg
        # /similarity: the source and its sentences are texts of one request.
        ok = {"source_sentence": "x", "sentences": ["y"] * (n - 1)}
        assert rec.post("/similarity", json={"inputs": ok}).status_code == 200
        over = {"source_sentence": "x", "sentences": ["y"] * n}
        msg = error_of(rec.post("/similarity", json={"inputs": over}), 422, "Validation")
        assert f"limit is {n} texts" in msg
        # /decode: id sequences per request.
        assert rec.post("/decode", json={"ids": [[5, 6]] * n}).status_code == 200
        msg = error_of(rec.post("/decode", json={"ids": [[5, 6]] * (n + 1)}), 422, "Validation")
        assert f"{n + 1} id sequences" in msg

        r = rec.post("/fill-mask", json={"inputs": "x [MASK] y", "top_k": MAX_TOP_K})
        assert r.status_code == 200 and len(r.json()["predictions"][0][0]) == MAX_TOP_K
        r = rec.post("/fill-mask", json={"inputs": "x [MASK] y", "top_k": MAX_TOP_K + 1})
        assert f"limit is {MAX_TOP_K}" in error_of(r, 422, "Validation")

        vocab = client.app.state.serve.registry.current.tokenizer
        targets = [vocab.id_to_token(i) for i in range(500, 500 + MAX_TARGETS + 1)]
        r = rec.post("/fill-mask", json={"inputs": "x [MASK]", "targets": targets[:-1]})
        assert r.status_code == 200, r.text
        assert {c["token_str"] for c in r.json()["predictions"][0][0]} <= set(targets[:-1])
        r = rec.post("/fill-mask", json={"inputs": "x [MASK]", "targets": targets})
        assert f"limit is {MAX_TARGETS}" in error_of(r, 422, "Validation")
    figures.record(**rec.tally(rejected={422}), max_client_batch=n)


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    return build_checkpoint(
        tmp_path_factory.mktemp("limits-reranker") / "rr",
        seed=11,
        max_positions=MODEL_POSITIONS,
        labels=("score",),
    )


def test_rerank_at_the_limits(reranker, figures):
    """Documents per request (max_client_batch) and tokens per (query, document) pair: at the
    limit served, one over refused without truncate, cut on the document's side with it."""
    n, limit = MAX_CLIENT_BATCH, 40
    with _client(reranker, limit) as client:
        rec = Recorder(client)
        query = _with_tokens(client, 6, mask=False)[: -len(" entity")]  # 3 tokens + specials
        doc_at = " ".join(["entity"] * (limit - 3 - 3))  # [CLS] q(3) [SEP] doc [SEP] = limit
        doc_over = doc_at + " entity"
        ok = rec.post("/rerank", json={"query": query, "texts": [doc_at] * n, "raw_scores": True})
        assert ok.status_code == 200 and len(ok.json()) == n, ok.text
        body = {"query": query, "texts": [doc_over], "truncate": False}
        msg = error_of(rec.post("/rerank", json=body), 422, "Validation")
        assert f"{limit + 1} tokens" in msg and f"limit of {limit}" in msg
        # Cut on the document's side, the over-long pair is exactly the pair at the limit.
        body = {"query": query, "texts": [doc_over, doc_over * 3], "raw_scores": True}
        cut = rec.post("/rerank", json=body).json()
        for r in cut:
            assert r["score"] == pytest.approx(ok.json()[0]["score"], abs=1e-5)
        for path, key in (("/rerank", "texts"), ("/v1/rerank", "documents")):
            msg = error_of(
                rec.post(path, json={"query": query, key: ["x"] * (n + 1)}), 422, "Validation"
            )
            assert f"{n + 1} {key} in one request" in msg and f"limit is {n}" in msg
    figures.record(**rec.tally(rejected={422}), limit_tokens=limit, max_client_batch=n)


def _body(size: int) -> bytes:
    """A valid /embed body of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    core = json.dumps({"inputs": "a general concept"}).encode()
    assert len(core) <= size
    return core + b" " * (size - len(core))


def test_body_at_the_limit_and_one_byte_over(checkpoint, figures):
    headers = {"content-type": "application/json"}
    with _client(checkpoint, 64) as client:
        rec = Recorder(client)
        at, over = _body(MAX_BODY), _body(MAX_BODY + 1)
        # By Content-Length.
        assert rec.post("/embed", content=at, headers=headers).status_code == 200
        r = rec.post("/embed", content=over, headers=headers)
        assert "exceeds the limit" in error_of(r, 413, "PayloadTooLarge")
        assert r.headers["connection"] == "close"

        # Chunked (no Content-Length): the server counts what it reads.
        def chunks(data: bytes, size: int = 500):
            for i in range(0, len(data), size):
                yield data[i : i + size]

        assert rec.post("/embed", content=chunks(at), headers=headers).status_code == 200
        error_of(rec.post("/embed", content=chunks(over), headers=headers), 413, "PayloadTooLarge")
        assert client.get("/health").status_code == 200
        metrics = client.get("/metrics").text
        # The 413s were answered before routing: no handler saw them.
        assert metric_value(metrics, "bert_requests_total", endpoint="other", status="413") == 2
    figures.record(**rec.tally(rejected={413}), max_body_bytes=MAX_BODY)


def test_endless_body_is_cut_at_the_limit_without_buffering_it(checkpoint, figures):
    """Drive the ASGI app with a body that never ends: the server must stop reading right
    after the limit (by counting), and not read at all when Content-Length already says no."""
    chunk = 1024
    with _client(checkpoint, 64) as client:

        async def post(headers: list[tuple[bytes, bytes]]) -> tuple[int, int, list[dict]]:
            pulled = 0
            sent: list[dict] = []

            async def receive():
                nonlocal pulled
                pulled += 1
                return {"type": "http.request", "body": b" " * chunk, "more_body": True}

            async def send(message):
                sent.append(message)

            scope = asgi_post_scope("/embed", headers)
            await client.app(scope, receive, send)
            return sent[0]["status"], pulled, sent

        status, pulled, _ = client.portal.call(post, [])
        assert status == 413
        # 2 KiB fit; the third 1 KiB chunk passes the limit and is the last one read.
        assert pulled == MAX_BODY // chunk + 1
        status_with_length, pulled_with_length, _ = client.portal.call(
            post, [(b"content-length", str(10**12).encode())]
        )
        assert status_with_length == 413 and pulled_with_length == 0
        assert client.get("/health").status_code == 200
    figures.record(
        **tally(2, [status, status_with_length], rejected={413}),
        bytes_read_chunked=pulled * chunk,
        bytes_read_with_length=pulled_with_length * chunk,
        max_body_bytes=MAX_BODY,
    )
