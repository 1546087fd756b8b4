"""Serving precision (app.precision, app.loading.choose_precision): ``auto`` takes a reduced
precision only where it is measured faster and passes its accuracy gate; configured bf16 and int8
serve only when they pass the gate; a failing one falls back to fp32 with a warning; whatever the
matrices ran in, pooling, normalization and softmax are fp32; ``/info``, ``bert_model_info`` and
``X-Model-Precision`` say what serves and why.

Every test here runs on every CPU: where bf16 is not native, torch emulates it (slowly, but with
the same rounding), so the gate and the answers are checked everywhere. Speed itself is injected
(``time_engines``) where a decision is asserted: bench/bench_model.py measures it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from app_testing import build_checkpoint, serve_config
from fastapi.testclient import TestClient

from app import precision as precisions
from app import quantization
from app.jobs import ClassifyJob, EmbedJob, FillMaskJob
from app.loading import load_engine
from app.main import create_app

DEFAULT = Path(__file__).resolve().parents[2] / "checkpoints" / "default"
REDUCED = ("bf16", "int8")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as every test server runs (serve_config): the gate and timing runs of
    these tests then cost the same on a busy shared machine as on a quiet one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _timings(**ms: float):
    """A stand-in for time_engines: fixed seconds per engine name."""
    return lambda engines, **_: {name: ms[name] / 1000 for name in engines}


def test_auto_candidates_follow_the_hardware(monkeypatch):
    monkeypatch.setattr(precisions, "native_bf16_cpu", lambda: False)
    tried = precisions.auto_candidates("cpu")
    assert "no native bf16" in tried["bf16"] and tried["int8"] is None
    monkeypatch.setattr(precisions, "native_bf16_cpu", lambda: True)
    assert precisions.auto_candidates("cpu") == {"bf16": None, "int8": None}
    assert "no cuda kernels" in precisions.unavailable("int8", "cuda")
    assert precisions.unavailable("bf16", "cpu") is None  # emulated where not native
    with pytest.raises(ValueError, match="precision must be one of"):
        precisions.check_precision("fp16")


@pytest.fixture(scope="module")
def fp32():
    return load_engine(DEFAULT, max_input_tokens=128)


@pytest.mark.parametrize(
    ("ms", "native", "want", "reason"),
    [
        ({"fp32": 10, "bf16": 5, "int8": 8}, True, "bf16", "auto: bf16 is 2.00x as fast"),
        ({"fp32": 10, "bf16": 7, "int8": 4}, True, "int8", "auto: int8 is 2.50x as fast"),
        ({"fp32": 10, "bf16": 9, "int8": 9.5}, True, "fp32", "bf16 is 1.11x fp32 (below 1.2x)"),
        ({"fp32": 10, "int8": 9}, False, "fp32", "bf16 not tried: this CPU has no native bf16"),
    ],
)
def test_auto_serves_the_fastest_precision_that_passes(monkeypatch, ms, native, want, reason):
    monkeypatch.setattr(precisions, "native_bf16_cpu", lambda: native)
    monkeypatch.setattr(precisions, "time_engines", _timings(**ms))
    engine = load_engine(DEFAULT, max_input_tokens=128, precision="auto")
    assert engine.precision == want
    report = engine.info()["precision"]
    assert report["effective"] == want and report["requested"] == "auto"
    assert reason in report["reason"], report["reason"]
    assert report["fp32_ms"] == ms["fp32"]
    for p in ms.keys() - {"fp32"}:
        c = report["candidates"][p]
        assert c["ms"] == ms[p] and c["speedup"] == round(ms["fp32"] / ms[p], 3)
        assert c["gate"]["passed"] is True
    if want != "fp32":
        assert report["gate"] == report["candidates"][want]["gate"]
        assert engine.model is not load_engine(DEFAULT).model


def test_auto_skips_a_faster_precision_that_fails_its_gate(monkeypatch):
    monkeypatch.setattr(precisions, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(precisions, "time_engines", _timings(fp32=10, bf16=4, int8=5))
    convert = precisions.convert

    def broken_bf16(model, precision, **kw):
        out = convert(model, precision, **kw)
        if precision == "bf16":
            with torch.no_grad():
                out.layers[0].ffn.down.weight.mul_(-3.0)
        return out

    monkeypatch.setattr(precisions, "convert", broken_bf16)
    engine = load_engine(DEFAULT, max_input_tokens=128, precision="auto")
    assert engine.precision == "int8"
    assert engine.precision_report["candidates"]["bf16"]["gate"]["passed"] is False


def test_bf16_passes_its_gate_and_answers_like_fp32(fp32):
    engine = load_engine(DEFAULT, max_input_tokens=128, precision="bf16")
    assert engine.precision == "bf16"
    qkv = engine.model.layers[0].attention.qkv
    assert isinstance(qkv, precisions.Bf16Linear) and qkv.weight.dtype == torch.bfloat16
    # Embeddings, norms and heads stay fp32; the fp32 model is untouched.
    assert engine.model.embeddings.word.weight.dtype == torch.float32
    assert engine.model.mlm_head.decoder.weight is engine.model.embeddings.word.weight
    assert fp32.model.layers[0].attention.qkv.weight.dtype == torch.float32
    report = engine.precision_report
    gate = report["gate"]
    assert gate["passed"] and gate["min_cosine"] >= precisions.MIN_COSINE
    assert gate["top5_overlap"] >= precisions.MIN_TOP5_OVERLAP
    assert report["reason"].startswith("configured (") and report["candidates"]["bf16"]["speedup"]
    jobs = [
        FillMaskJob(inputs=fp32.encode_fill_mask(list(precisions.PROBES), truncate=True), top_k=1)
    ]
    want, got = fp32.run_batch(jobs)[0], engine.run_batch(jobs)[0]
    same = sum(w[0][0][0] == g[0][0][0] for w, g in zip(want, got, strict=True))
    assert same >= 0.9 * len(want)


def test_int8_serves_on_the_default_checkpoint_within_the_gate(fp32):
    """int8 as served (calibrated SmoothQuant, per-token scales) passes the stricter gate on the
    shipped model without any threshold moved, and quantizes every encoder matmul."""
    engine = load_engine(DEFAULT, max_input_tokens=128, precision="int8")
    assert engine.precision == "int8", engine.precision_report["reason"]
    gate = engine.precision_report["gate"]
    assert gate["passed"] and gate["min_cosine"] >= precisions.MIN_COSINE
    assert abs(gate["recall_delta"]) <= precisions.MAX_RECALL_DELTA + 1e-9
    assert gate["top5_overlap"] >= precisions.MIN_TOP5_OVERLAP
    assert gate["top1_agreement"] >= precisions.MIN_TOP1_AGREEMENT
    assert gate["retrieval_pairs"] == len(precisions.probe_set().queries) == 200
    recipe = engine.precision_report["candidates"]["int8"]["int8"]
    assert recipe["smooth"] == ["qkv", "up"] and recipe["per_token"] == list(quantization.MATMULS)
    for layer in engine.model.layers:
        for name in quantization.MATMULS:
            parent, attr = quantization.matmuls(layer)[name]
            assert isinstance(getattr(parent, attr), quantization.Int8Linear), (name, attr)
    # Embeddings, norms and heads stay fp32; the fp32 model is untouched.
    assert engine.model.mlm_head.decoder.weight is engine.model.embeddings.word.weight
    assert engine.model.embeddings.word.weight.dtype == torch.float32
    assert isinstance(fp32.model.layers[0].ffn.up, torch.nn.Linear)
    # /info counts the checkpoint's parameters, not what the packed kernels still expose.
    assert engine.info()["parameters"] == fp32.info()["parameters"] == fp32.model.num_parameters()
    assert engine.model.num_parameters() < fp32.model.num_parameters()


def test_an_int8_answer_does_not_depend_on_its_batch():
    """int8 quantizes each batch with one range; the anchor row fixes it, so a text's embedding
    (and a pair's score) is the same alone as beside any others, as in fp32."""
    engine = load_engine(DEFAULT, max_input_tokens=128, precision="int8")
    assert engine.precision == "int8", engine.precision_report["reason"]
    texts = ["a", "the dog barked at the mailman all afternoon", "rivers run to the sea", "x y"]
    encoded = engine.encode_many(texts, truncate=True)

    def embed(batch):
        job = EmbedJob(inputs=batch, pooling="mean", normalize=False)
        return torch.tensor(engine.run_batch([job])[0])

    together = embed(encoded)
    alone = torch.cat([embed([e]) for e in encoded])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
    reranker = load_engine(DEFAULT.parent / "reranker", precision="int8")
    assert reranker.precision == "int8", reranker.precision_report["reason"]
    pairs = reranker.encode_pairs([("a young dog", t) for t in texts], truncate=True)

    def scores(batch):
        job = ClassifyJob(inputs=batch, function="none")
        return [row[0] for row in reranker.run_batch([job])[0]]

    assert scores(pairs) == pytest.approx([scores([p])[0] for p in pairs], abs=1e-5)


def test_the_gate_is_stricter_than_plain_dynamic_int8(fp32):
    """torch.ao's dynamic int8 with per-tensor weights and 7-bit activations, what served
    before on every layer but the last, fails the new gate on the default checkpoint."""
    import warnings

    model = copy.deepcopy(fp32.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, layer in enumerate(model.layers):
            model.layers[i] = torch.ao.quantization.quantize_dynamic(
                layer, {torch.nn.Linear}, dtype=torch.qint8
            )
    report = precisions.measure(fp32, dataclasses.replace(fp32, model=model))
    assert not report.passed, report.as_dict()


def test_gate_report_passes_only_within_every_threshold():
    ok = precisions.GateReport(
        min_cosine=0.999,
        recall=0.80,
        reference_recall=0.805,
        top5_overlap=0.96,
        top1_agreement=0.98,
        label_agreement=1.0,
    )
    assert ok.passed and ok.as_dict()["recall_delta"] == -0.005
    for change in (
        {"min_cosine": 0.9949},
        {"recall": 0.79},  # -1.5 points
        {"recall": 0.82},  # +1.5 points: a change either way is a change
        {"top5_overlap": 0.949},
        {"top1_agreement": 0.969},
        {"label_agreement": 0.98},
    ):
        assert not dataclasses.replace(ok, **change).passed, change
    # A check that does not apply (no MLM head, no classifier) passes.
    assert dataclasses.replace(ok, top5_overlap=None, top1_agreement=None).passed


def test_recall_at_k_counts_ties_in_expectation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    # Query 2 scores 0.707 against documents 0 and 1, 0 against its own: 2 above it.
    assert precisions.recall_at_k(q, d, k=1) == pytest.approx(2 / 3)
    assert precisions.recall_at_k(q, d, k=3) == pytest.approx(1.0)
    tied = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Each query's own document ties with the other: recall@1 is 1/2 in expectation.
    assert precisions.recall_at_k(tied, tied, k=1) == pytest.approx(0.5)


def test_the_probe_set_covers_long_inputs_and_retrieval(fp32):
    probes = precisions.probe_set()
    assert len(probes.masked) == len(probes.texts) >= 40
    assert sum(p.count("[MASK]") for p in probes.masked) >= 100
    assert len(probes.queries) == len(probes.documents) == 200
    assert len(set(probes.documents)) == 200  # each query has exactly one right answer
    jobs = precisions.gate_jobs(fp32)
    lengths = [len(e) for e in jobs[0].inputs]
    assert lengths[-2:] == [fp32.max_input_tokens] * 2 and max(lengths[:-2]) < 64
    masks = sum(len(e.mask_positions) for e in jobs[1].inputs)
    assert masks >= 120, masks
    # The calibration text is training-split text, never a probe.
    assert not set(probes.calibration) & set(probes.texts + probes.queries + probes.documents)


def test_a_precision_that_fails_its_gate_falls_back_to_fp32(fp32, monkeypatch, caplog):
    convert = precisions.convert

    def broken(model, precision, **kw):  # a conversion that damages the weights
        out = convert(model, precision, **kw)
        with torch.no_grad():
            out.layers[0].ffn.down.weight.mul_(-3.0)
        return out

    monkeypatch.setattr(precisions, "convert", broken)
    with caplog.at_level(logging.WARNING, logger="app.loading"):
        engine = load_engine(DEFAULT, max_input_tokens=128, precision="bf16")
    assert engine.precision == "fp32"
    assert engine.model.layers[0].ffn.down.weight.dtype == torch.float32
    report = engine.precision_report
    assert report["requested"] == "bf16" and report["gate"]["passed"] is False
    assert "failed the accuracy gate" in report["reason"]
    assert "fails its accuracy gate" in caplog.text
    jobs = [
        FillMaskJob(inputs=fp32.encode_fill_mask(list(precisions.PROBES), truncate=True), top_k=3)
    ]
    assert engine.run_batch(jobs) == fp32.run_batch(jobs)


def test_timing_batches_are_short_and_near_the_limit(fp32):
    short, long = precisions.timing_jobs(fp32)
    assert [len(e) for e in short[0].inputs] == [
        len(e) for e in fp32.encode_many(list(precisions.PROBES), truncate=True)
    ]
    assert all(len(e) == fp32.max_input_tokens for e in long[0].inputs)
    seconds = precisions.time_engines({"fp32": fp32})
    assert 0 < seconds["fp32"] < 5


# --- answers computed in fp32 whatever the encoder ran in ------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return build_checkpoint(
        tmp_path_factory.mktemp("clf") / "clf", seed=3, labels=("neg", "pos", "mid")
    )


@pytest.mark.parametrize("precision", ["fp32", *REDUCED])
def test_outputs_are_fp32_under_every_precision(precision, classifier, monkeypatch):
    """Unit vectors have norm 1 to 1e-6; fill-mask and classifier scores are the float64 softmax
    of the served model's own logits to 1e-6; similarities are dot products of unit vectors."""
    # Whether the answers are good enough is the gate's business (tested above); here every
    # precision must serve, on any CPU, so that its outputs can be checked.
    monkeypatch.setattr(precisions.GateReport, "passed", property(lambda self: True))
    config = serve_config(DEFAULT, precision=precision, max_input_tokens=128)
    with TestClient(create_app(config)) as client:
        engine = client.app.state.serve.registry.current
        assert engine.precision == precision
        texts = ["a small domesticated cat kept as a pet", "open the file", "x " * 100]
        for route, body, vectors in (
            ("/embed", {"inputs": texts, "truncate": True}, lambda r: r),
            ("/v1/embeddings", {"input": texts[:2]}, lambda r: [d["embedding"] for d in r["data"]]),
        ):
            r = client.post(route, json=body)
            assert r.status_code == 200 and r.headers["x-model-precision"] == precision
            norms = np.linalg.norm(np.array(vectors(r.json()), dtype=np.float64), axis=1)
            assert np.abs(norms - 1).max() < 1e-6, norms
        raw = client.post("/embed", json={"inputs": texts[:2], "normalize": False}).json()
        unit = [np.array(v) / np.linalg.norm(v) for v in raw]
        r = client.post(
            "/",
            json={"inputs": {"source_sentence": texts[0], "sentences": texts[1:2]}},
        )
        assert r.status_code == 200, r.text
        assert abs(r.json()[0] - float(unit[0] @ unit[1])) < 1e-6

        text = "a small domesticated [MASK] kept as a pet"
        served = client.post("/fill-mask", json={"inputs": text, "top_k": 5}).json()
        enc = engine.encode_fill_mask([text], truncate=False)[0]
        with torch.inference_mode():
            ids = torch.tensor([enc.ids])
            pred = torch.zeros_like(ids, dtype=torch.bool)
            pred[0, enc.mask_positions] = True
            logits = engine.model(ids, prediction_mask=pred, return_hidden=False).logits
        assert logits.dtype == torch.float32
        probs = logits.double().softmax(-1)[0]
        for c in served["predictions"][0][0]:
            assert abs(c["score"] - float(probs[c["token"]])) < 1e-6

    config = serve_config(classifier, precision=precision)
    with TestClient(create_app(config)) as client:
        engine = client.app.state.serve.registry.current
        r = client.post("/predict", json={"inputs": "a good film"})
        assert r.status_code == 200 and r.headers["x-model-precision"] == engine.precision
        enc = engine.encode_many(["a good film"], truncate=False)
        with torch.inference_mode():
            logits = engine.model.classify(torch.tensor([enc[0].ids])).logits[0]
        probs = dict(
            zip(engine.capabilities.labels, logits.double().softmax(-1).tolist(), strict=True)
        )
        for p in r.json():
            assert abs(p["score"] - probs[p["label"]]) < 1e-6
        jobs = [ClassifyJob(inputs=enc, function="softmax"), EmbedJob(inputs=enc)]
        assert all(isinstance(x, float) for x in engine.run_batch(jobs)[1][0])


def test_the_server_reports_its_precision_and_why(monkeypatch):
    monkeypatch.setattr(precisions, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(precisions, "time_engines", _timings(fp32=10, bf16=6, int8=9))
    config = serve_config(DEFAULT, precision="auto", max_input_tokens=128)
    with TestClient(create_app(config)) as client:
        info = client.get("/info").json()["model"]["precision"]
        assert info["effective"] == "bf16" and info["requested"] == "auto"
        assert info["reason"] == (
            "auto: bf16 is 1.67x as fast as fp32 here and passes its accuracy gate"
        )
        assert info["candidates"]["bf16"]["speedup"] == 1.667
        assert 'precision="bf16"' in client.get("/metrics").text
        r = client.post("/fill-mask", json={"inputs": "a small [MASK] kept as a pet"})
        assert r.status_code == 200 and 0.0 < r.json()["predictions"][0][0][0]["score"] <= 1.0
        assert r.headers["x-model-precision"] == "bf16"


def test_a_cpu_without_vnni_or_bf16_says_what_it_serves_and_why(monkeypatch):
    """Without VNNI int8 keeps its activations to 7 bits (no saturating int16 sums) and is gated
    like any other; without native bf16, bf16 is not tried. Whatever serves, /info says why."""
    monkeypatch.setattr(quantization, "int8_dot_cpu", lambda: False)
    monkeypatch.setattr(precisions, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(precisions, "time_engines", _timings(fp32=10, int8=4))
    engine = load_engine(DEFAULT, max_input_tokens=128, precision="auto")
    report = engine.precision_report
    int8 = report["candidates"]["int8"]
    assert int8["int8"]["activation_bits"] == 7
    assert "bf16 not tried: this CPU has no native bf16" in report["reason"] or (
        engine.precision == "int8"
    )
    if int8["gate"]["passed"]:
        assert engine.precision == "int8" and report["reason"].startswith("auto: int8 is 2.50x")
        assert all(m.reduce_range for m in engine.model.modules() if hasattr(m, "reduce_range"))
    else:
        assert engine.precision == "fp32"
        assert "int8 fails its accuracy gate (" in report["reason"], report["reason"]


def test_ranking_agreement_known_answers():
    want = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    assert precisions.ranking_agreement(want, want) == (1.0, 1.0)
    # Row 0 keeps its best but swaps its last two; row 1 loses its best.
    got = torch.tensor([[3.0, 1.0, 2.0], [0.0, 2.0, 1.0]])
    top1, order = precisions.ranking_agreement(want, got)
    assert top1 == 0.5 and order == pytest.approx(4 / 6)
    # Within a tie of 1, row 0's last two and row 1's best two are ties: all of it is kept;
    # below it, nothing changes.
    assert precisions.ranking_agreement(want, got, tie=1.0) == (1.0, 1.0)
    assert precisions.ranking_agreement(want, got, tie=0.99) == (0.5, pytest.approx(4 / 6))
    # A tie is judged on fp32's scores: a candidate that swaps documents 2 apart is wrong.
    far = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 2.0]])
    assert precisions.ranking_agreement(want, far, tie=1.0) == (0.5, pytest.approx(3 / 6))


def test_a_reranker_is_gated_on_its_rankings_not_on_one_label():
    """A one-label head's argmax always agrees, so a reranker's gate compares rankings of probe
    documents per query; a conversion that scrambles the scores fails it."""
    shipped = DEFAULT.parent / "reranker"
    fp32 = load_engine(shipped)
    same = precisions.measure(fp32, fp32)
    assert same.label_agreement is None
    assert same.rerank_top1 == 1.0 and same.rerank_pair_order == 1.0 and same.passed
    scrambled = copy.deepcopy(fp32.model)
    with torch.no_grad():
        scrambled.classifier.out.weight.mul_(-1.0)  # every ranking reversed
    report = precisions.measure(fp32, dataclasses.replace(fp32, model=scrambled))
    assert report.rerank_top1 < 0.5 and report.rerank_pair_order < 0.5 and not report.passed
    assert report.as_dict()["thresholds"]["rerank_pair_order"] == precisions.MIN_PAIR_ORDER
    # Rankings kept but every score shifted (a threshold on scores would break): it fails too.
    shifted = copy.deepcopy(fp32.model)
    with torch.no_grad():
        shifted.classifier.out.bias.add_(0.2 * float(same_scores_std(fp32)))
    report = precisions.measure(fp32, dataclasses.replace(fp32, model=shifted))
    assert report.rerank_top1 == 1.0 and report.rerank_pair_order == 1.0
    assert report.rerank_score_error == pytest.approx(0.2, rel=1e-3) and not report.passed


def same_scores_std(engine) -> float:
    """The standard deviation of ``engine``'s scores of the gate's reranking pairs."""
    encoded = engine.encode_pairs(precisions.rerank_pairs(), truncate=True, strategy="only_second")
    scores = engine.run_batch([ClassifyJob(inputs=encoded, function="none")])[0]
    return float(torch.tensor([row[0] for row in scores]).std())
