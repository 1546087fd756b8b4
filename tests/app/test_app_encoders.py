"""What a BERT-class encoder is used for, served and checked against the libraries people already
use (fp32, to 1e-5): reranking (``/rerank``, ``/v1/rerank``, ``/v2/rerank``) against
sentence-transformers' ``CrossEncoder.predict``; sentence pairs in ``/predict`` against
transformers' text-classification pipeline; SPLADE vectors (``/embed_sparse``) against the
formula on transformers' MLM logits and against ``SparseEncoder.encode``; token vectors
(``/embed_all``) against transformers' hidden states; ``/similarity``; ``/decode`` against
transformers' fast tokenizer; ``dimensions`` and ``prompt_name`` against
``SentenceTransformer.encode``.

Every model is a tiny random one built here by those libraries (nothing is downloaded), and every
server is pinned to fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from app_testing import error_of, serve_config
from fastapi.testclient import TestClient
from hf_testing import SIZES, hf_bert_dir, hf_tokenizer, offline, st_dir, vocabulary

from app.main import create_app

transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

TOL = dict(atol=1e-5, rtol=1e-5)
QUERY = "what is a domesticated animal"
DOCS = [
    "a small domesticated carnivorous mammal kept as a pet",
    "a large body of water surrounded by land",
    "the act of moving from one place to another",
    "an animal that has been tamed " + "and kept by people for company " * 12,  # over the limit
    "a dog",
]
TEXTS = ["a cat sat on the mat .", "rivers run to the sea", "the end", "hello , world !"]
LIMIT = 48  # max_input_tokens of the rerank server: DOCS[3] is cut


def _client(directory: Path, **settings) -> TestClient:
    values = {"precision": "fp32", "max_input_tokens": 128, **settings}
    return TestClient(create_app(serve_config(directory, **values)))


def _classifier_dir(directory: Path, num_labels: int, seed: int = 0) -> Path:
    """transformers' BertForSequenceClassification (weights drawn wide, segments that matter)
    and its tokenizer."""
    config = transformers.BertConfig(vocab_size=1500, num_labels=num_labels, **SIZES)
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config).eval()
    g = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 1.0 if "token_type" in name else 0.3
            p.copy_(torch.randn(p.shape, generator=g) * (std if p.dim() > 1 else 0.1))
    model.save_pretrained(directory)
    hf_tokenizer(vocabulary(1500)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    offline()
    root = tmp_path_factory.mktemp("encoders")
    from sentence_transformers import CrossEncoder, SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    one_label = _classifier_dir(root / "one-label", 1)
    cross = root / "cross-encoder"
    CrossEncoder(str(one_label), device="cpu").save(str(cross))
    mlm = hf_bert_dir(root / "mlm", vocab_size=1500)
    encoder = hf_bert_dir(root / "encoder", head="BertModel", vocab_size=1500)
    splade = root / "splade"
    SparseEncoder(
        modules=[Transformer(str(mlm), transformer_task="fill-mask"), SpladePooling("max")],
        device="cpu",
    ).save(str(splade))
    bi = st_dir(root / "bi", encoder, pooling="mean", normalize=True)
    settings = bi / "config_sentence_transformers.json"
    data = json.loads(settings.read_text())
    data.update(prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name="query")
    settings.write_text(json.dumps(data))
    return {
        "one-label": one_label,
        "cross-encoder": cross,
        "three": _classifier_dir(root / "three", 3, seed=3),
        "mlm": mlm,
        "splade": splade,
        "bi": bi,
    }


# --- reranking -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cross-encoder", "one-label"])
def test_rerank_equals_cross_encoder_predict(dirs, kind):
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(dirs[kind]), device="cpu", max_length=LIMIT)
    expected = reference.predict([(QUERY, d) for d in DOCS])  # sigmoid: one label
    logits = CrossEncoder(
        str(dirs[kind]), device="cpu", max_length=LIMIT, activation_fn=torch.nn.Identity()
    ).predict([(QUERY, d) for d in DOCS])
    with _client(dirs[kind], max_input_tokens=LIMIT) as client:
        caps = client.get("/info").json()["model"]["capabilities"]
        assert caps["rerank"] and caps["score_activation"] == "sigmoid"
        assert caps["cross_encoder"] is (kind == "cross-encoder")
        r = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True})
        assert r.status_code == 200, r.text
        results = r.json()
        assert [x["index"] for x in results] == list(np.argsort(-expected, kind="stable"))
        got = np.zeros(len(DOCS))
        for x in results:
            got[x["index"]] = x["score"]
            assert x["text"] == DOCS[x["index"]]
        np.testing.assert_allclose(got, expected, **TOL)
        raw = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
        raw_scores = {x["index"]: x["score"] for x in raw.json()}
        np.testing.assert_allclose([raw_scores[i] for i in range(len(DOCS))], logits, **TOL)
        assert "text" not in raw.json()[0] or raw.json()[0]["text"] is None
        # The long document is cut on its side to fit; refused without truncate.
        body = {"query": QUERY, "texts": DOCS, "truncate": False}
        assert "more than the limit" in error_of(
            client.post("/rerank", json=body), 422, "Validation"
        )

        # Cohere (v1, Jina) and Cohere v2: the same scores, top_n, documents as objects.
        docs = [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]]
        body = {"query": QUERY, "documents": docs, "top_n": 2, "return_documents": True}
        v1 = client.post("/v1/rerank", json=body).json()
        assert [x["index"] for x in v1["results"]] == [x["index"] for x in results[:2]]
        for x in v1["results"]:
            assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-5)
            assert x["document"] == {"text": DOCS[x["index"]]}
        assert v1["model"] == r.headers["x-model-version"] and v1["id"]
        assert v1["meta"]["api_version"]["version"] == "1"
        v2 = client.post("/v2/rerank", json={"model": "x", "query": QUERY, "documents": DOCS})
        assert [x["index"] for x in v2.json()["results"]] == [x["index"] for x in results]
        assert "document" not in v2.json()["results"][0]
        assert v2.json()["meta"]["api_version"]["version"] == "2"
        # max_tokens_per_doc cuts each document first: the long one then scores as its head.
        short = client.post(
            "/v2/rerank", json={"query": QUERY, "documents": DOCS[3:4], "max_tokens_per_doc": 4}
        ).json()["results"][0]["relevance_score"]
        tok = reference.tokenizer
        q, d = (tok(x, add_special_tokens=False)["input_ids"] for x in (QUERY, DOCS[3]))
        ids = [tok.cls_token_id, *q, tok.sep_token_id, *d[:4], tok.sep_token_id]
        types = [0] * (len(q) + 2) + [1] * 5
        with torch.no_grad():
            logit = reference.model(
                input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])
            ).logits[0, 0]
        assert short == pytest.approx(float(torch.sigmoid(logit)), abs=1e-5)


def test_rerank_needs_a_cross_encoder_and_predict_scores_one_label_models(dirs):
    with _client(dirs["mlm"]) as client:
        for path, body in (
            ("/rerank", {"query": QUERY, "texts": DOCS}),
            ("/v1/rerank", {"query": QUERY, "documents": DOCS}),
        ):
            assert "is not a reranker" in error_of(client.post(path, json=body), 400, "Unsupported")
    with _client(dirs["one-label"]) as client:
        # A one-label head is a score: the sigmoid of its logit (a softmax would always be 1).
        pred = client.post("/predict", json={"inputs": [[QUERY, DOCS[0]]]}).json()[0]
        ranked = client.post("/rerank", json={"query": QUERY, "texts": DOCS[:1]}).json()
        assert pred[0]["score"] == pytest.approx(ranked[0]["score"], abs=1e-6)
        assert 0 < pred[0]["score"] < 1
        msg = error_of(
            client.post("/rerank", json={"query": QUERY, "texts": []}), 422, "Validation"
        )
        assert "texts" in msg


def test_errors_name_the_text_as_the_request_does(dirs):
    """A blank text inside a pair or a rerank request is named by its place in the body the
    client sent (``inputs[1][1]``, ``texts[1]``, ``documents[1]``, ``query``), not by its place
    in the flattened list of texts the server tokenizes."""
    with _client(dirs["one-label"], max_client_batch=4) as client:
        for path, body, name in (
            ("/predict", {"inputs": [[QUERY, DOCS[0]], [QUERY, " "]]}, "inputs[1][1]"),
            ("/predict", {"inputs": [DOCS[0], ""]}, "inputs[1]"),
            ("/rerank", {"query": QUERY, "texts": [DOCS[0], " "]}, "texts[1]"),
            ("/rerank", {"query": " ", "texts": DOCS[:2]}, "query"),
            ("/v1/rerank", {"query": QUERY, "documents": [DOCS[0], ""]}, "documents[1]"),
            ("/v2/rerank", {"query": QUERY, "documents": [{"text": ""}]}, "documents[0]"),
        ):
            msg = error_of(client.post(path, json=body), 422, "Validation")
            assert msg == f"{name} is empty", (path, msg)
        for path, field in (("/rerank", "texts"), ("/v1/rerank", "documents")):
            body = {"query": QUERY, field: DOCS}  # 5 documents, the limit is 4
            msg = error_of(client.post(path, json=body), 422, "Validation")
            assert msg.startswith(f"5 {field} in one request"), msg


def test_predict_takes_sentence_pairs_as_the_pipeline_does(dirs):
    tok = transformers.AutoTokenizer.from_pretrained(dirs["three"])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(dirs["three"]).eval()
    pipe = transformers.pipeline(
        "text-classification", model=model, tokenizer=tok, top_k=None, device="cpu"
    )
    pairs = [(QUERY, d) for d in DOCS[:3]]
    with _client(dirs["three"]) as client:
        r = client.post("/predict", json={"inputs": [list(p) for p in pairs]})
        assert r.status_code == 200, r.text
        for ours, (a, b) in zip(r.json(), pairs, strict=True):
            theirs = pipe({"text": a, "text_pair": b})
            assert [p["label"] for p in ours] == [p["label"] for p in theirs]
            np.testing.assert_allclose(
                [p["score"] for p in ours], [p["score"] for p in theirs], **TOL
            )
        # The order of the texts matters (segments): a pair is not two texts.
        swapped = client.post("/predict", json={"inputs": [[DOCS[0], QUERY]]}).json()[0]
        assert swapped != r.json()[0]
        texts = client.post("/predict", json={"inputs": [QUERY, DOCS[0]]}).json()
        assert len(texts) == 2  # a list of strings stays a list of texts


# --- SPLADE ----------------------------------------------------------------------------------


def _dense(sparse: list[dict], size: int) -> np.ndarray:
    out = np.zeros(size)
    for item in sparse:
        out[item["index"]] = item["value"]
    return out


def test_embed_sparse_is_splade_on_transformers_logits(dirs):
    tok = transformers.AutoTokenizer.from_pretrained(dirs["mlm"])
    model = transformers.AutoModelForMaskedLM.from_pretrained(dirs["mlm"]).eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    special = enc.pop("special_tokens_mask")
    with torch.no_grad():
        logits = model(**enc).logits  # (B, T, V)
    keep = (enc["attention_mask"].bool() & ~special.bool()).unsqueeze(-1)  # (B, T, 1)
    weights = torch.log1p(torch.relu(logits)).masked_fill(~keep, 0.0)
    expected = weights.amax(dim=1).numpy()  # (B, V): max over the text's own tokens
    with _client(dirs["mlm"]) as client:
        assert client.get("/info").json()["model"]["capabilities"]["sparse"] is True
        r = client.post("/embed_sparse", json={"inputs": TEXTS})
        assert r.status_code == 200, r.text
        for vec, want in zip(r.json(), expected, strict=True):
            assert [x["index"] for x in vec] == sorted(x["index"] for x in vec)
            assert all(x["value"] > 0 for x in vec) and len(vec) == np.count_nonzero(want)
            np.testing.assert_allclose(_dense(vec, 1500), want, **TOL)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_embed_sparse_equals_sparse_encoder(dirs):
    from sentence_transformers import SparseEncoder

    reference = SparseEncoder(str(dirs["splade"]), device="cpu")
    expected = reference.encode(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False)
    with _client(dirs["splade"]) as client:
        vectors = client.post("/embed_sparse", json={"inputs": TEXTS}).json()
    for vec, want in zip(vectors, expected.numpy(), strict=True):
        np.testing.assert_allclose(_dense(vec, 1500), want, **TOL)


def test_embed_sparse_needs_an_mlm_head(dirs):
    with _client(dirs["bi"]) as client:
        r = client.post("/embed_sparse", json={"inputs": "x"})
        assert "no masked-language-model head" in error_of(r, 400, "Unsupported")
        assert client.get("/info").json()["model"]["capabilities"]["sparse"] is False


# --- token vectors, similarity, decode -----------------------------------------------------------


def test_embed_all_gives_transformers_hidden_states(dirs):
    tok = transformers.AutoTokenizer.from_pretrained(dirs["mlm"])
    model = transformers.BertModel.from_pretrained(dirs["mlm"]).eval()
    with _client(dirs["mlm"]) as client:
        got = client.post("/embed_all", json={"inputs": TEXTS}).json()
    for text, vectors in zip(TEXTS, got, strict=True):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]  # (T, H): [CLS] and [SEP] included
        assert len(vectors) == hidden.shape[0]
        np.testing.assert_allclose(np.array(vectors), hidden.numpy(), **TOL)


def test_similarity_route_and_root_route_are_sentence_transformers_cosines(dirs):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import cos_sim

    reference = SentenceTransformer(str(dirs["bi"]), device="cpu")
    vectors = reference.encode(TEXTS, convert_to_tensor=True)  # the default prompt ("query: ")
    expected = cos_sim(vectors[:1], vectors[1:])[0].numpy()
    inputs = {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}
    with _client(dirs["bi"]) as client:
        tei = client.post("/similarity", json={"inputs": inputs})
        root = client.post("/", json={"inputs": inputs})
        assert tei.status_code == root.status_code == 200, tei.text
        np.testing.assert_allclose(tei.json(), expected, **TOL)
        assert tei.json() == root.json()  # one code path


def test_decode_equals_transformers_fast_tokenizer(dirs):
    tok = transformers.AutoTokenizer.from_pretrained(dirs["mlm"])
    ids = [tok(t)["input_ids"] for t in TEXTS]
    with _client(dirs["mlm"]) as client:
        for skip in (True, False):
            body = {"ids": ids, "skip_special_tokens": skip}
            assert client.post("/decode", json=body).json() == [
                tok.decode(i, skip_special_tokens=skip) for i in ids
            ]
        assert client.post("/decode", json={"ids": ids[0]}).json() == [
            tok.decode(ids[0], skip_special_tokens=True)
        ]
        r = client.post("/decode", json={"ids": [5, 99999]})
        assert "outside the vocabulary" in error_of(r, 422, "Validation")


# --- prompts and dimensions ----------------------------------------------------------------------


def test_prompts_and_dimensions_equal_sentence_transformers(dirs):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(dirs["bi"]), device="cpu")
    default = reference.encode(TEXTS)  # prompt "query: " by default
    passage = reference.encode(TEXTS, prompt_name="passage")
    with _client(dirs["bi"]) as client:
        caps = client.get("/info").json()["model"]["capabilities"]
        assert caps["prompts"] == {"query": "query: ", "passage": "passage: "}
        assert caps["default_prompt_name"] == "query" and caps["max_dimensions"] == 32
        np.testing.assert_allclose(
            client.post("/embed", json={"inputs": TEXTS}).json(), default, **TOL
        )
        got = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "passage"}).json()
        np.testing.assert_allclose(got, passage, **TOL)
        oai = client.post("/v1/embeddings", json={"input": TEXTS, "prompt_name": "passage"}).json()
        np.testing.assert_allclose([d["embedding"] for d in oai["data"]], passage, **TOL)
        # dimensions: the first 8 values of the (pre-Normalize) vector, normalized again.
        raw = reference.encode(TEXTS, normalize_embeddings=False, output_value="sentence_embedding")
        cut = client.post("/embed", json={"inputs": TEXTS, "dimensions": 8}).json()
        unit = default[:, :8] / np.linalg.norm(default[:, :8], axis=1, keepdims=True)
        np.testing.assert_allclose(cut, unit, **TOL)
        assert raw.shape == (len(TEXTS), 32)
        r = client.post("/embed", json={"inputs": "x", "prompt_name": "nope"})
        assert "its prompts: passage, query" in error_of(r, 422, "Validation")
        error_of(client.post("/embed", json={"inputs": "x", "dimensions": 33}), 400, "Unsupported")
    # The server's default_prompt_name overrides the model's; one the model lacks is a 422.
    with _client(dirs["bi"], default_prompt_name="passage") as client:
        np.testing.assert_allclose(
            client.post("/embed", json={"inputs": TEXTS}).json(), passage, **TOL
        )
    with _client(dirs["bi"], default_prompt_name="title") as client:
        r = client.post("/embed", json={"inputs": "x"})
        assert "the server's default_prompt_name 'title'" in error_of(r, 422, "Validation")


def test_the_shipped_reranker_scores_with_its_own_activation():
    """checkpoints/reranker names an identity activation: /predict, /rerank and
    CrossEncoder.predict all answer its logits."""
    from sentence_transformers import CrossEncoder

    shipped = Path(__file__).resolve().parents[2] / "checkpoints" / "reranker"
    pairs = [(QUERY, d) for d in DOCS[:3]]
    expected = CrossEncoder(str(shipped), device="cpu").predict(pairs)
    with _client(shipped) as client:
        caps = client.get("/info").json()["model"]["capabilities"]
        assert caps["rerank"] and caps["score_activation"] == "identity"
        ranked = client.post("/rerank", json={"query": QUERY, "texts": DOCS[:3]}).json()
        predicted = client.post("/predict", json={"inputs": [list(p) for p in pairs]}).json()
    by_index = {r["index"]: r["score"] for r in ranked}
    np.testing.assert_allclose([by_index[i] for i in range(3)], expected, **TOL)
    np.testing.assert_allclose([p[0]["score"] for p in predicted], expected, **TOL)
    assert not all(0 < s < 1 for s in expected)  # logits, not sigmoid probabilities
