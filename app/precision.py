"""Serving precision: run a loaded fp32 model in bf16 or int8, only where it answers like fp32.

* ``resolve(requested, device)``: ``auto`` is bf16 where the hardware multiplies bf16 natively
  (a CPU with ``avx512_bf16`` or AMX, a CUDA GPU that supports it), else fp32. On CPUs without
  it (AVX2 only) bf16 matrix multiplies are emulated and several times slower than fp32.
* ``convert(model, precision)``: a new model; bf16 casts every weight, int8 is dynamic
  quantization of the encoder's linear layers but the last layer's (int8 weights per output
  channel, activations quantized per batch at run time; fbgemm / x86 kernels, CPU only). The
  embeddings, norms, the last layer and the heads stay in fp32: the MLM decoder shares its
  matrix with the word embeddings.
* ``measure(reference, candidate)``: the accuracy gate. Both engines answer a fixed probe set
  (``PROBES``); the candidate passes when every embedding has cosine >= ``MIN_COSINE`` with the
  fp32 one, fill-mask top-5 sets overlap by >= ``MIN_TOP5_OVERLAP`` on average (MLM models),
  and the top label agrees on >= ``MIN_LABEL_AGREEMENT`` of the probes (classifiers).

``app.loading.load_engine`` runs the gate at every load; a precision that fails it falls back
to fp32 with a warning, and ``/info`` and ``bert_model_info`` report what serves.

Deliberately not here: fp16 (no CPU kernels worth having; on GPU bf16 is the safer 16-bit
choice for BERT's activations), static quantization (needs calibration data), and int8 on CUDA
(dynamic quantization has no CUDA kernels: it falls back to fp32).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.engine import Engine
from app.jobs import ClassifyJob, EmbedJob, FillMaskJob
from model.hardware import native_bf16_cpu

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
MIN_COSINE = 0.999
MIN_TOP5_OVERLAP = 0.95
MIN_LABEL_AGREEMENT = 0.95

# The probe set: plain sentences every English WordPiece vocabulary can tokenize, one [MASK]
# each, in the register of the shipped corpus (dictionary glosses, Python documentation).
PROBES = (
    "a small domesticated [MASK] kept as a pet",
    "the act of moving from one [MASK] to another",
    "a person who works in a [MASK] or office",
    "return the number of [MASK] in the list",
    "a large body of [MASK] surrounded by land",
    "raise an exception if the file does not [MASK]",
    "the quality of being [MASK] and kind",
    "an instrument used for measuring [MASK]",
    "the function returns a new [MASK] object",
    "a building where people go to [MASK] films",
    "the period of time between [MASK] and night",
    "open the file and read its [MASK] line by line",
    "a feeling of great [MASK] or happiness",
    "the keys of the [MASK] are strings",
    "a tool with a sharp [MASK] for cutting",
    "the state of being [MASK] from danger",
)


@dataclass(frozen=True)
class GateReport:
    """How a reduced precision answered the probes compared with fp32."""

    min_cosine: float
    top5_overlap: float | None  # None without an MLM head
    label_agreement: float | None  # None without a classifier

    @property
    def passed(self) -> bool:
        return (
            self.min_cosine >= MIN_COSINE
            and (self.top5_overlap is None or self.top5_overlap >= MIN_TOP5_OVERLAP)
            and (self.label_agreement is None or self.label_agreement >= MIN_LABEL_AGREEMENT)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_cosine": round(self.min_cosine, 6),
            "top5_overlap": None if self.top5_overlap is None else round(self.top5_overlap, 4),
            "label_agreement": (
                None if self.label_agreement is None else round(self.label_agreement, 4)
            ),
            "thresholds": {
                "min_cosine": MIN_COSINE,
                "top5_overlap": MIN_TOP5_OVERLAP,
                "label_agreement": MIN_LABEL_AGREEMENT,
            },
            "passed": self.passed,
        }


def resolve(requested: str, device: torch.device | str = "cpu") -> tuple[str, str]:
    """(precision to try, why): ``auto`` picks bf16 where it is native, else fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    device = torch.device(device)
    if requested == "int8" and device.type != "cpu":
        return "fp32", f"int8 (dynamic quantization) has no {device.type} kernels"
    if requested != "auto":
        return requested, "configured"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU supports bf16"
        return "fp32", "auto: the GPU has no bf16"
    if native_bf16_cpu():
        return "bf16", "auto: the CPU has native bf16 (avx512_bf16 / AMX)"
    return "fp32", "auto: the CPU has no native bf16 (bf16 would be emulated, slower than fp32)"


def convert(model: nn.Module, precision: str) -> nn.Module:
    """A copy of the fp32 ``model`` in ``precision`` (the same object for fp32)."""
    if precision == "fp32":
        return model
    if precision == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16)
    if precision == "int8":
        quantized = copy.deepcopy(model)
        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao, which has no eager
            # dynamic int8 path on CPU as fast as fbgemm's yet; the API still works in torch 2.x.
            warnings.simplefilter("ignore")
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            # Every layer but the last: the last one feeds the heads directly, so its rounding
            # errors reach the answers unattenuated, and on the fill-mask fast path it runs at
            # the [MASK] positions only, where int8 would save next to nothing.
            layers = quantized.layers
            for i in range(len(layers) - 1):
                layers[i] = torch.ao.quantization.quantize_dynamic(
                    layers[i], {nn.Linear: qconfig}, dtype=torch.qint8
                )
        return quantized
    raise ValueError(f"cannot convert a model to {precision!r}")


def measure(reference: Engine, candidate: Engine) -> GateReport:
    """Run the probe set through both engines and compare the answers (see the module doc)."""
    jobs: list[Any] = [
        EmbedJob(
            inputs=reference.encode_many(list(PROBES), truncate=True),
            pooling=reference.capabilities.pooling,
            normalize=False,
        )
    ]
    if reference.can_fill_mask:
        inputs = reference.encode_fill_mask(list(PROBES), truncate=True)
        jobs.append(FillMaskJob(inputs=inputs, top_k=5))
    if reference.can_classify:
        inputs = reference.encode_many(list(PROBES), truncate=True)
        jobs.append(ClassifyJob(inputs=inputs, function="none"))
    want, got = reference.run_batch(jobs), candidate.run_batch(jobs)

    a, b = torch.tensor(want[0]), torch.tensor(got[0])  # (P, H)
    min_cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
    top5 = labels = None
    for job, w, g in zip(jobs[1:], want[1:], got[1:], strict=True):
        if isinstance(job, FillMaskJob):
            overlaps = [
                len({t for t, _ in wm} & {t for t, _ in gm}) / len(wm)
                for wi, gi in zip(w, g, strict=True)
                for wm, gm in zip(wi, gi, strict=True)
            ]
            top5 = sum(overlaps) / len(overlaps)
        else:
            agree = [
                max(range(len(wr)), key=wr.__getitem__) == max(range(len(gr)), key=gr.__getitem__)
                for wr, gr in zip(w, g, strict=True)
            ]
            labels = sum(agree) / len(agree)
    return GateReport(min_cosine=min_cosine, top5_overlap=top5, label_agreement=labels)
