"""Sparse (SPLADE) retrieval in `bert-eval --task retrieval --sparse`: its vectors equal the
server's `/embed_sparse` for the same checkpoint (a plain MLM, [CLS]/[SEP] left out; a
sentence-transformers SparseEncoder, with its own settings), and the task's figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from app_testing import build_checkpoint, serve_config
from fastapi.testclient import TestClient
from torch.nn.functional import normalize

from app.main import create_app
from training.data.pairs import retrieval_set
from training.evaluation.cli import main
from training.evaluation.retrieval import retrieval_metrics
from training.evaluation.sparse import CheckpointSparseEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [
    "a dog is an animal .",
    "the river bank at night",
    "[MASK] is here",  # a literal [MASK] covers characters: it counts, as in the server
    "an abstract concept formed by extracting common features from specific examples",
]
GLOSSES = (
    "dog, domestic dog: a member of the genus Canis. The dog barked all night.\n"
    "bank: sloping land beside a body of water. They pulled the canoe up on the bank.\n"
    "run: move fast on foot. He ran to the station. She runs every day.\n"
)


def _served(directory: Path, texts: list[str]) -> np.ndarray:
    """`/embed_sparse` of `texts` as dense (N, vocabulary) rows."""
    with TestClient(create_app(serve_config(directory, precision="fp32"))) as client:
        r = client.post("/embed_sparse", json={"inputs": texts})
        assert r.status_code == 200, r.text
        vocab = client.get("/info").json()["model"]["vocab_size"]
    out = np.zeros((len(texts), vocab), dtype=np.float32)
    for row, pairs in enumerate(r.json()):
        for p in pairs:
            out[row, p["index"]] = p["value"]
    return out


@pytest.fixture(scope="module")
def mlm(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("sparse") / "mlm", seed=5)


def test_bert_eval_sparse_vectors_equal_the_servers_embed_sparse(mlm):
    encoder = CheckpointSparseEncoder.load(mlm)
    assert encoder.skip_special and (encoder.pooling, encoder.activation) == ("max", "relu")
    ours = encoder.encode(TEXTS, batch_size=3).numpy()  # two batches of different lengths
    served = _served(mlm, TEXTS)
    assert ours.shape == served.shape
    np.testing.assert_allclose(ours, served, atol=1e-5, rtol=1e-5)
    assert ((ours > 0) == (served > 0)).all() and (ours > 0).sum(axis=1).min() > 0


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_a_sparse_encoder_directory_keeps_its_settings_as_the_server_does(tmp_path):
    pytest.importorskip("sentence_transformers")
    from hf_testing import hf_bert_dir, offline
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    offline()
    base = hf_bert_dir(tmp_path / "mlm", vocab_size=1500)
    modules = [
        Transformer(str(base), transformer_task="fill-mask"),
        SpladePooling(pooling_strategy="sum", activation_function="log1p_relu"),
    ]
    SparseEncoder(modules=modules, device="cpu", max_active_dims=9).save(str(tmp_path / "st"))
    encoder = CheckpointSparseEncoder.load(tmp_path / "st")
    assert not encoder.skip_special and encoder.max_active_dims == 9
    ours = encoder.encode(TEXTS).numpy()
    np.testing.assert_allclose(ours, _served(tmp_path / "st", TEXTS), atol=1e-5, rtol=1e-5)
    assert ((ours > 0).sum(axis=1) <= 9).all()


def test_bert_eval_retrieval_sparse_scores_dot_products_beside_tfidf(mlm, tmp_path, capsys):
    corpus = tmp_path / "glosses.txt"
    corpus.write_text(GLOSSES, encoding="utf-8")
    args = ["--task", "retrieval", "--sparse", "--checkpoint", str(mlm), "--corpus", str(corpus)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["system"], out["queries"], out["candidates"]) == ("splade", 4, 3)
    rset = retrieval_set([corpus])
    encoder = CheckpointSparseEncoder.load(mlm)
    q = encoder.encode(rset.queries)
    c = encoder.encode(rset.candidates)
    expected = retrieval_metrics(q @ c.T, rset.targets)
    unit = retrieval_metrics(normalize(q, dim=1) @ normalize(c, dim=1).T, rset.targets)
    for k in ("recall@1", "recall@10", "mrr"):
        assert out["ours"][k] == pytest.approx(expected[k], abs=1e-12)
        assert out["cosine"][k] == pytest.approx(unit[k], abs=1e-12)
    assert out["active_dims"]["queries"] == pytest.approx(float((q > 0).sum(1).double().mean()))
    assert out["ratio_to_tfidf"]["mrr"] == pytest.approx(out["ours"]["mrr"] / out["tfidf"]["mrr"])


def test_a_checkpoint_without_mlm_head_has_no_sparse_vectors(tmp_path, capsys):
    clf = build_checkpoint(tmp_path / "clf", labels=("a", "b"))
    corpus = tmp_path / "glosses.txt"
    corpus.write_text(GLOSSES, encoding="utf-8")
    args = ["--task", "retrieval", "--sparse", "--checkpoint", str(clf), "--corpus", str(corpus)]
    assert main(args) == 2
    assert "no SPLADE vectors" in capsys.readouterr().err
