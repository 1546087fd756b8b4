"""Real clients, unchanged, against a live server (uvicorn on a loopback port): huggingface_hub's
``InferenceClient(base_url=...)`` (``POST /``: fill_mask, feature_extraction, sentence_similarity,
and text_classification: refused in the error shape by a model without classifier, answered by a
classifier) and openai's ``embeddings.create`` (float and base64), against the default
checkpoint, a sentence-transformers directory and a tiny seeded classifier.

Expected values come from our own endpoints and from sentence-transformers, never hard-coded:
``checkpoints/default`` may be replaced by a newer checkpoint of the same format. The clients
talk only to 127.0.0.1; the hub's offline switch (which blocks every request of
``InferenceClient``, local ones included) is lifted for their calls alone.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_testing import build_checkpoint, serve_config
from hf_testing import hf_bert_dir, offline, st_dir
from ui_browser import live_server

from app.main import create_app

huggingface_hub = pytest.importorskip("huggingface_hub")
openai = pytest.importorskip("openai")
sentence_transformers = pytest.importorskip("sentence_transformers")

DEFAULT = Path(__file__).resolve().parents[2] / "checkpoints" / "default"
SENTENCES = ["a small dog", "a little puppy", "a python function"]


@pytest.fixture
def clients(monkeypatch):
    """A function that gives (InferenceClient, OpenAI client, httpx client) for a base URL."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    opened = []

    def make(url: str):
        http = httpx.Client(base_url=url, timeout=30)
        opened.append(http)
        hub = huggingface_hub.InferenceClient(base_url=url, timeout=30)
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        return hub, oai, http

    yield make
    for http in opened:
        http.close()


def _cosines(vectors: np.ndarray) -> list[float]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return [float(unit[0] @ v) for v in unit[1:]]


def _check_openai(oai, http, expected: np.ndarray) -> None:
    result = oai.embeddings.create(input=SENTENCES, model="bertserve")
    got = np.array([d.embedding for d in result.data])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert result.usage.prompt_tokens > len(SENTENCES)
    raw = oai.embeddings.create(input=SENTENCES[0], model="bertserve", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(raw.data[0].embedding), dtype="<f4")
    np.testing.assert_allclose(decoded, expected[0], atol=1e-6)


def test_clients_against_the_default_checkpoint(clients):
    app = create_app(serve_config(DEFAULT, max_input_tokens=128))
    with live_server(app) as url:
        hub, oai, http = clients(url)
        text = "the cat sat on the [MASK]."
        ours = http.post("/fill-mask", json={"inputs": text, "top_k": 3}).json()["predictions"][0][
            0
        ]
        got = hub.fill_mask(text, top_k=3)
        assert [c.token for c in got] == [c["token"] for c in ours]
        assert [c.token_str for c in got] == [c["token_str"] for c in ours]
        np.testing.assert_allclose([c.score for c in got], [c["score"] for c in ours], atol=1e-6)
        two = hub.fill_mask("a [MASK] is a [MASK] animal.")
        assert len(two) == 2 and all(len(per_mask) == 5 for per_mask in two)

        expected = np.array(http.post("/embed", json={"inputs": SENTENCES}).json())
        features = hub.feature_extraction(SENTENCES[0], normalize=True)
        assert features.shape == (1, expected.shape[1])
        np.testing.assert_allclose(features[0], expected[0], atol=1e-6)
        scores = hub.sentence_similarity(SENTENCES[0], other_sentences=SENTENCES[1:])
        np.testing.assert_allclose(scores, _cosines(expected), atol=1e-5)
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as refused:
            hub.text_classification("a good film", function_to_apply="softmax")
        assert refused.value.response.status_code == 400
        assert refused.value.response.json()["error_type"] == "Unsupported"
        _check_openai(oai, http, expected)


@pytest.fixture(scope="module")
def st_model(tmp_path_factory):
    """A sentence-transformers directory: mean pooling, no Normalize module."""
    offline()
    root = tmp_path_factory.mktemp("st-clients")
    base = hf_bert_dir(root / "base", head="BertModel", seed=7)
    return st_dir(root / "st", base, pooling="mean", normalize=False)


def test_clients_against_a_sentence_transformers_directory(clients, st_model):
    reference = sentence_transformers.SentenceTransformer(str(st_model), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_numpy=True)
    assert abs(np.linalg.norm(expected, axis=1) - 1).max() > 0.01  # really not normalised
    # Pinned: compared with sentence-transformers' fp32 vectors to 1e-5.
    app = create_app(serve_config(st_model, max_input_tokens=128, precision="fp32"))
    with live_server(app) as url:
        hub, oai, http = clients(url)
        caps = http.get("/info").json()["model"]["capabilities"]
        assert caps["fill_mask"] is False and caps["normalize"] is False
        features = hub.feature_extraction(SENTENCES)  # the model's defaults: no normalisation
        np.testing.assert_allclose(features, expected, atol=1e-5, rtol=1e-5)
        unit = hub.feature_extraction(SENTENCES[1], normalize=True)
        np.testing.assert_allclose(np.linalg.norm(unit), 1.0, atol=1e-6)
        scores = hub.sentence_similarity(SENTENCES[0], other_sentences=SENTENCES[1:])
        np.testing.assert_allclose(scores, _cosines(expected), atol=1e-5)
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as refused:
            hub.fill_mask("a [MASK] dog")
        assert refused.value.response.status_code == 400
        assert "no masked-language-model head" in refused.value.response.json()["error"]
        _check_openai(oai, http, np.asarray(expected))


def test_text_classification_client_against_a_classifier(clients, tmp_path):
    labels = ("neg", "pos", "neutral")
    classifier = build_checkpoint(tmp_path / "clf", seed=3, labels=labels)
    text = "a good film"
    with live_server(create_app(serve_config(classifier))) as url:
        hub, _, http = clients(url)
        for kwargs, body in (
            ({}, {}),
            ({"top_k": 1}, {"top_k": 1}),
            ({"function_to_apply": "none"}, {"raw_scores": True}),
        ):
            expected = http.post("/predict", json={"inputs": text, **body}).json()
            got = hub.text_classification(text, **kwargs)
            assert [e.label for e in got] == [p["label"] for p in expected], kwargs
            np.testing.assert_allclose(
                [e.score for e in got], [p["score"] for p in expected], atol=1e-6
            )
        assert len(hub.text_classification(text)) == len(labels)
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as refused:
            hub.fill_mask("a [MASK] film")
        assert refused.value.response.status_code == 400
        assert "no masked-language-model head" in refused.value.response.json()["error"]


def test_cohere_rerank_and_openai_dimensions_with_an_api_key(clients, tmp_path):
    """cohere's SDK (v1 and v2 clients) reranks against /v1/rerank and /v2/rerank, openai's
    embeddings.create(dimensions=...) cuts vectors, both sending the server's API key."""
    cohere = pytest.importorskip("cohere")
    key = "client-key-0123456789abcdef"
    reranker = build_checkpoint(tmp_path / "rr", seed=7, labels=("score",))  # one label
    docs = ["a small dog", "a python function", "a little puppy", "the sea"]
    with live_server(create_app(serve_config(reranker, api_key=key, precision="fp32"))) as url:
        _, _, http = clients(url)
        auth = {"Authorization": f"Bearer {key}"}
        expected = http.post("/rerank", json={"query": "dog", "texts": docs}, headers=auth).json()
        order = [x["index"] for x in expected]
        scores = {x["index"]: x["score"] for x in expected}
        v1 = cohere.Client(api_key=key, base_url=url, timeout=30)
        got = v1.rerank(query="dog", documents=docs, top_n=3, return_documents=True)
        assert [r.index for r in got.results] == order[:3]
        for r in got.results:
            assert r.relevance_score == pytest.approx(scores[r.index], abs=1e-6)
            assert r.document.text == docs[r.index]
        v2 = cohere.ClientV2(api_key=key, base_url=url, timeout=30)
        got = v2.rerank(model="bertserve", query="dog", documents=docs)
        assert [r.index for r in got.results] == order
        with pytest.raises(cohere.core.ApiError) as refused:
            cohere.Client(api_key="wrong-key-0123456789", base_url=url).rerank(
                query="dog", documents=docs
            )
        assert refused.value.status_code == 401
    encoder = build_checkpoint(tmp_path / "enc", seed=8)
    with live_server(create_app(serve_config(encoder, api_key=key, precision="fp32"))) as url:
        _, _, http = clients(url)
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
        full = np.array(oai.embeddings.create(input=SENTENCES, model="m").data[0].embedding)
        cut = np.array(
            oai.embeddings.create(input=SENTENCES, model="m", dimensions=8).data[0].embedding
        )
        np.testing.assert_allclose(cut, full[:8] / np.linalg.norm(full[:8]), atol=1e-6)
        with pytest.raises(openai.BadRequestError):
            oai.embeddings.create(input=SENTENCES, model="m", dimensions=999)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).embeddings.create(
                input="x", model="m"
            )
