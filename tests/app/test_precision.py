"""Serving precision (app.precision): ``auto`` resolves by the hardware, bf16 and int8 serve only
when they pass the accuracy gate against fp32, a failing one falls back to fp32 with a warning,
and ``/info`` and ``bert_model_info`` say what serves.

Deliberately not here: speed (bench/bench_model.py measures each precision).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from app_testing import serve_config
from fastapi.testclient import TestClient

from app import precision as precisions
from app.jobs import EmbedJob, FillMaskJob
from app.loading import load_engine
from app.main import create_app

DEFAULT = Path(__file__).resolve().parents[2] / "checkpoints" / "default"


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(precisions, "native_bf16_cpu", lambda: False)
    assert precisions.resolve("auto")[0] == "fp32"
    monkeypatch.setattr(precisions, "native_bf16_cpu", lambda: True)
    assert precisions.resolve("auto")[0] == "bf16"
    assert precisions.resolve("fp32") == ("fp32", "configured")
    target, why = precisions.resolve("int8", "cuda")
    assert target == "fp32" and "no cuda kernels" in why
    with pytest.raises(ValueError, match="precision must be one of"):
        precisions.resolve("fp16")


@pytest.fixture(scope="module")
def fp32():
    return load_engine(DEFAULT, max_input_tokens=128)


def test_bf16_passes_its_gate_and_answers_like_fp32(fp32):
    engine = load_engine(DEFAULT, max_input_tokens=128, precision="bf16")
    assert engine.precision == "bf16"
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    gate = engine.precision_report["gate"]
    assert gate["passed"] and gate["min_cosine"] >= precisions.MIN_COSINE
    assert gate["top5_overlap"] >= precisions.MIN_TOP5_OVERLAP
    assert engine.info()["precision"]["effective"] == "bf16"
    # The served answers: float32 numbers, the same best candidate on the probes.
    jobs = [
        FillMaskJob(inputs=fp32.encode_fill_mask(list(precisions.PROBES), truncate=True), top_k=1)
    ]
    want, got = fp32.run_batch(jobs)[0], engine.run_batch(jobs)[0]
    same = sum(w[0][0][0] == g[0][0][0] for w, g in zip(want, got, strict=True))
    assert same >= 0.9 * len(want)
    embed = EmbedJob(inputs=fp32.encode_many(["a test ."], truncate=True))
    assert all(isinstance(x, float) for x in engine.run_batch([embed])[0][0])


def test_int8_quantizes_the_encoder_and_is_measured(fp32, monkeypatch):
    int8 = precisions.convert(fp32.model, "int8")
    assert int8 is not fp32.model and fp32.model.layers[0].ffn.up.weight.dtype == torch.float32
    linear = int8.layers[0].ffn.up
    assert "quantized" in type(linear).__module__, type(linear)
    # The MLM decoder keeps sharing the word embeddings' fp32 matrix.
    assert int8.mlm_head.decoder.weight is int8.embeddings.word.weight
    import dataclasses

    report = precisions.measure(fp32, dataclasses.replace(fp32, model=int8, precision="int8"))
    assert 0.98 < report.min_cosine <= 1.0 + 1e-6 and 0.5 < report.top5_overlap <= 1.0
    # With thresholds it meets, int8 serves.
    monkeypatch.setattr(precisions, "MIN_COSINE", report.min_cosine - 1e-6)
    monkeypatch.setattr(precisions, "MIN_TOP5_OVERLAP", report.top5_overlap)
    engine = load_engine(DEFAULT, max_input_tokens=128, precision="int8")
    assert engine.precision == "int8" and engine.precision_report["gate"]["passed"]


def test_a_precision_that_fails_its_gate_falls_back_to_fp32(fp32, monkeypatch, caplog):
    convert = precisions.convert

    def broken(model, precision):  # a conversion that damages the weights
        out = convert(model, precision)
        with torch.no_grad():
            out.layers[0].ffn.down.weight.mul_(-3.0)
        return out

    monkeypatch.setattr(precisions, "convert", broken)
    with caplog.at_level(logging.WARNING, logger="app.engine"):
        engine = load_engine(DEFAULT, max_input_tokens=128, precision="bf16")
    assert engine.precision == "fp32"
    assert next(engine.model.parameters()).dtype == torch.float32
    report = engine.precision_report
    assert report["requested"] == "bf16" and report["gate"]["passed"] is False
    assert "failed the accuracy gate" in report["reason"]
    assert "fails its accuracy gate" in caplog.text
    # fp32 answers are untouched by the failed attempt.
    jobs = [
        FillMaskJob(inputs=fp32.encode_fill_mask(list(precisions.PROBES), truncate=True), top_k=3)
    ]
    assert engine.run_batch(jobs) == fp32.run_batch(jobs)


def test_the_server_reports_its_precision():
    config = serve_config(DEFAULT, precision="bf16", max_input_tokens=128)
    with TestClient(create_app(config)) as client:
        info = client.get("/info").json()["model"]
        assert info["precision"]["effective"] == "bf16"
        assert info["precision"]["requested"] == "bf16" and info["precision"]["gate"]["passed"]
        assert 'precision="bf16"' in client.get("/metrics").text
        r = client.post("/fill-mask", json={"inputs": "a small [MASK] kept as a pet"})
        assert r.status_code == 200 and 0.0 < r.json()["predictions"][0][0][0]["score"] <= 1.0
