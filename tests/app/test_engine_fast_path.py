"""The engine's fast paths: a pass with only fill-mask rows runs the last layer at the [MASK]
positions alone (`return_hidden=False`), and a pass with only classification rows at [CLS] alone
(`model.classify`); a pass that also embeds needs every token (the classifier then reads the
[CLS] rows of the full hidden states). Both ways must give the same answers.

Deliberately not here: speed (bench/), and the HTTP layer (tests/app/test_app.py).
"""

from __future__ import annotations

import pytest
import torch
from app_testing import build_checkpoint

from app.jobs import ClassifyJob, EmbedJob, FillMaskJob
from app.loading import load_engine

TEXTS = ["the [MASK] sat on the mat .", "a [MASK] of the [MASK] kind", "[MASK]"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return load_engine(build_checkpoint(tmp_path_factory.mktemp("fast") / "ckpt"))


def _spy(engine, monkeypatch) -> list[bool]:
    calls: list[bool] = []
    forward = engine.model.forward

    def recording(*args, **kwargs):
        calls.append(kwargs.get("return_hidden", True))
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", recording)
    return calls


def test_fill_mask_alone_takes_the_fast_path_with_the_same_answers(engine, monkeypatch):
    fill = FillMaskJob(inputs=engine.encode_fill_mask(TEXTS, truncate=True), top_k=5)
    embed = EmbedJob(inputs=engine.encode_many(["a test ."], truncate=True))
    calls = _spy(engine, monkeypatch)
    with torch.inference_mode():
        alone = engine.run_batch([fill])[0]
        fast_calls = list(calls)
        calls.clear()
        mixed, vectors = engine.run_batch([fill, embed])
    assert fast_calls and not any(fast_calls)  # every pass without embeddings: fast path
    assert calls and all(calls)  # the mixed pass keeps every token's hidden state
    assert len(vectors) == 1 and len(vectors[0]) == engine.config.hidden_size
    for a, m in zip(alone, mixed, strict=True):  # per input, per mask, (id, probability)
        for cands_a, cands_m in zip(a, m, strict=True):
            assert [i for i, _ in cands_a] == [i for i, _ in cands_m]
            assert [p for _, p in cands_a] == pytest.approx([p for _, p in cands_m], abs=1e-6)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fast-classifier") / "ckpt"
    return load_engine(build_checkpoint(directory, labels=("a", "b", "c")))


def test_classification_alone_runs_classify_and_mixed_passes_agree(classifier, monkeypatch):
    texts = ["a good film", "the dog barked at the cat .", "x"]
    inputs = classifier.encode_many(texts, truncate=True)
    raw, probs = ClassifyJob(inputs=inputs, function="none"), ClassifyJob(inputs=inputs)
    embed = EmbedJob(inputs=classifier.encode_many(["a test ."], truncate=True))
    calls: list[str] = []
    for name in ("classify", "encode"):
        method = getattr(classifier.model, name)

        def recording(*args, _method=method, _name=name, **kwargs):
            calls.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(classifier.model, name, recording)
    alone = classifier.run_batch([raw])[0]
    assert calls and set(calls) == {"classify"}  # only classifications: [CLS]-only last layer
    calls.clear()
    mixed_raw, vectors, mixed_probs = classifier.run_batch([raw, embed, probs])
    assert calls and set(calls) == {"encode"}  # one full pass serves every kind of row
    assert len(vectors[0]) == classifier.config.hidden_size
    torch.testing.assert_close(torch.tensor(mixed_raw), torch.tensor(alone), atol=1e-5, rtol=1e-5)
    expected = torch.tensor(alone).softmax(dim=-1)
    torch.testing.assert_close(torch.tensor(mixed_probs), expected, atol=1e-6, rtol=1e-5)
    assert all(len(row) == 3 for row in alone)
