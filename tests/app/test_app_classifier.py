"""Serving a text classifier: ``/predict`` (TEI's shape) and ``POST /`` text classification on a
tiny seeded BertForSequenceClassification, against transformers' text-classification pipeline and
model on the same directory; the errors ``/predict`` shares with ``/embed``; what the other routes
do on a classifier, and what ``/predict`` does on a model without one.

Deliberately not here: input limits at the boundary and schema fuzzing (tests/reliability/), the
hot swap between a classifier and an MLM model (test_app_reload.py), huggingface_hub's client
(test_app_clients.py), and the engine's fast path (test_engine_fast_path.py).
"""

from __future__ import annotations

import pytest
import torch
from app_testing import build_checkpoint, error_of, serve_config
from fastapi.testclient import TestClient

from app.main import create_app

LABELS = ("neg", "pos", "neutral")
TEXTS = [
    "a good film",
    "an entity that has physical existence .",
    "the dog barked at the cat",
    "x",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(a classifier over LABELS, an MLM model without classifier)."""
    root = tmp_path_factory.mktemp("classifier")
    return (
        build_checkpoint(root / "clf", seed=3, labels=LABELS),
        build_checkpoint(root / "mlm", seed=1),
    )


@pytest.fixture(scope="module")
def client(models):
    # Pinned: the answers are compared with transformers' fp32 pipeline to 1e-5.
    with TestClient(create_app(serve_config(models[0], precision="fp32"))) as c:
        yield c


@pytest.fixture(scope="module")
def hf(models):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(models[0])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(models[0]).eval()
    assert tuple(model.config.id2label[i] for i in range(len(LABELS))) == LABELS
    pipe = transformers.pipeline(
        "text-classification", model=model, tokenizer=tok, top_k=None, device="cpu"
    )
    return tok, model, pipe


def _assert_same_ranking(ours, theirs):
    """Labels in the same order, scores to 1e-5, best first."""
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    torch.testing.assert_close(
        torch.tensor([p["score"] for p in ours]),
        torch.tensor([p["score"] for p in theirs]),
        atol=1e-5,
        rtol=1e-5,
    )
    scores = [p["score"] for p in ours]
    assert scores == sorted(scores, reverse=True)


# --- parity with transformers ------------------------------------------------------------------


def test_predict_matches_the_text_classification_pipeline(client, hf):
    _, _, pipe = hf
    theirs = pipe(TEXTS)  # a list in: one list of every label per text, best first
    r = client.post("/predict", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == client.get("/info").json()["model"]["version"]
    batch = r.json()
    assert len(batch) == len(TEXTS)
    for ours, their in zip(batch, theirs, strict=True):
        assert {p["label"] for p in ours} == set(LABELS)
        _assert_same_ranking(ours, their)
    for text, their in zip(TEXTS, theirs, strict=True):
        single = client.post("/predict", json={"inputs": text}).json()  # one text: a flat list
        assert isinstance(single[0], dict)
        _assert_same_ranking(single, their)
    assert sum(p["score"] for p in batch[0]) == pytest.approx(1.0, abs=1e-6)


def test_raw_scores_are_the_models_logits_and_top_k_cuts(client, hf):
    tok, model, pipe = hf
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits  # (B, num_labels)
    r = client.post("/predict", json={"inputs": TEXTS, "raw_scores": True})
    assert r.status_code == 200, r.text
    for ours, row in zip(r.json(), logits, strict=True):
        by_label = {p["label"]: p["score"] for p in ours}
        got = torch.tensor([by_label[label] for label in LABELS])
        torch.testing.assert_close(got, row, atol=1e-5, rtol=1e-5)
        assert [p["score"] for p in ours] == sorted(by_label.values(), reverse=True)
    best = client.post("/predict", json={"inputs": TEXTS, "top_k": 1}).json()
    for ours, their in zip(best, pipe(TEXTS), strict=True):
        assert len(ours) == 1
        _assert_same_ranking(ours, their[:1])
    two = client.post("/predict", json={"inputs": TEXTS[0], "top_k": 2}).json()
    assert [p["label"] for p in two] == [p["label"] for p in pipe(TEXTS[:1])[0][:2]]
    many = client.post("/predict", json={"inputs": TEXTS[0], "top_k": 10}).json()
    assert len(many) == len(LABELS)  # as the pipeline: top_k past the labels gives them all


def test_root_route_classifies_in_the_inference_api_shape(client, hf):
    _, _, pipe = hf
    for parameters, kwargs in (
        ({}, {}),  # a classifier without MLM head: its pipeline is text classification
        ({"function_to_apply": "softmax"}, {}),
        (
            {"function_to_apply": "sigmoid", "top_k": 2},
            {"function_to_apply": "sigmoid", "top_k": 2},
        ),
        ({"function_to_apply": "none"}, {"function_to_apply": "none"}),
    ):
        r = client.post("/", json={"inputs": TEXTS[1], "parameters": parameters})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body) == 1  # one list per input, even for one text
        _assert_same_ranking(body[0], pipe([TEXTS[1]], **kwargs)[0])
    r = client.post("/", json={"inputs": TEXTS, "parameters": {"top_k": 1}})
    assert [len(row) for row in r.json()] == [1] * len(TEXTS)
    r = client.post(
        "/", json={"inputs": "x", "parameters": {"function_to_apply": "none", "targets": ["x"]}}
    )
    assert "different tasks" in error_of(r, 422, "Validation")


# --- errors: the same as /embed -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": ""},
        {"inputs": "   "},
        {"inputs": []},
        {"inputs": ["ok", ""]},
        {"inputs": ["ok"] * 9},  # max_client_batch is 8
        {"inputs": " ".join(["entity"] * 80)},  # more than 64 tokens, truncate not asked for
        {"inputs": "ok", "truncate": "yes"},
        {"inputs": "ok", "truncation_direction": "middle"},
        {},
    ],
)
def test_invalid_input_is_refused_as_embed_refuses_it(client, body):
    r = client.post("/predict", json=body)
    error_of(r, 422, "Validation")
    same = client.post("/embed", json=body)
    assert same.json() == r.json()  # one check for both routes: the same message, too


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": 42}, "inputs"),
        ({"inputs": [1, 2]}, "inputs"),
        ({"inputs": [["a", "b", "c"]]}, "at most 2 items"),  # a pair is two texts
        ({"inputs": [["a"]]}, "at least 2 items"),
        ({"inputs": ["a", ["b", "c"]]}, "mixes texts and sentence pairs"),  # ambiguous
        ({"inputs": [["ok", ""]]}, "empty"),
        ({"inputs": "ok", "raw_scores": 1}, "raw_scores"),
        ({"inputs": "ok", "top_k": 0}, "top_k"),
        ({"inputs": "ok", "top_k": "2"}, "top_k"),
        ({"inputs": "ok", "normalize": True}, "normalize"),  # an /embed field, not /predict's
    ],
)
def test_invalid_predict_options_are_422(client, body, fragment):
    assert fragment in error_of(client.post("/predict", json=body), 422, "Validation")


def test_lone_surrogate_and_truncation(client):
    r = client.post(
        "/predict",
        content=b'{"inputs": "a \\ud800 b"}',
        headers={"content-type": "application/json"},
    )
    assert "Unicode" in error_of(r, 422, "Validation")
    long_text = " ".join(["entity"] * 80)
    for direction in ("right", "Left"):
        r = client.post(
            "/predict",
            json={"inputs": long_text, "truncate": True, "truncation_direction": direction},
        )
        assert r.status_code == 200 and len(r.json()) == len(LABELS), r.text


# --- capabilities --------------------------------------------------------------------------------


def test_a_classifier_embeds_and_refuses_fill_mask(client):
    model = client.get("/info").json()["model"]
    caps = model["capabilities"]
    assert caps["labels"] == list(LABELS) and caps["classify"] is True
    assert caps["fill_mask"] is False and caps["kind"] == "BertForSequenceClassification"
    for path, body in (
        ("/fill-mask", {"inputs": "a [MASK] film"}),
        ("/", {"inputs": "a [MASK] film", "parameters": {"targets": ["good"]}}),
        ("/", {"inputs": ["a film", "a [MASK] film"], "parameters": {}}),  # a mask: fill-mask
    ):
        msg = error_of(client.post(path, json=body), 400, "Unsupported")
        assert "no masked-language-model head" in msg and "\n" not in msg
        assert msg.endswith("it serves text classification and embeddings")
    vectors = client.post("/embed", json={"inputs": TEXTS}).json()
    assert len(vectors) == len(TEXTS) and len(vectors[0]) == model["config"]["hidden_size"]
    r = client.post("/v1/embeddings", json={"input": TEXTS[0]})
    assert r.status_code == 200 and r.headers["x-model-version"] == model["version"]
    text = client.get("/metrics").text
    assert 'kind="BertForSequenceClassification",num_labels="3"' in text
    assert 'bert_requests_total{endpoint="/predict",status="200"}' in text
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_a_model_without_classifier_answers_predict_400(models):
    with TestClient(create_app(serve_config(models[1]))) as client:
        caps = client.get("/info").json()["model"]["capabilities"]
        assert caps["labels"] == [] and caps["classify"] is False
        for path, body in (
            ("/predict", {"inputs": "a good film"}),
            ("/", {"inputs": "a good film", "parameters": {"function_to_apply": "softmax"}}),
        ):
            msg = error_of(client.post(path, json=body), 400, "Unsupported")
            assert "has no classification head, so it cannot classify text" in msg
            assert "it serves fill-mask, sparse vectors and embeddings" in msg and "\n" not in msg
        # With no classifier parameter, the root route is still the MLM model's fill-mask.
        r = client.post("/", json={"inputs": "a [MASK] film", "parameters": {}})
        assert r.status_code == 200 and "token_str" in r.json()[0]
        assert 'kind="BertForMaskedLM",num_labels="0"' in client.get("/metrics").text
    unstarted = TestClient(create_app(serve_config(models[0])))  # no lifespan: nothing loaded
    error_of(unstarted.post("/predict", json={"inputs": "x"}), 503, "Unhealthy")
