"""Serving precision: run a loaded fp32 model in bf16 or int8, only where it answers like fp32
and, for ``auto``, only where it is measured faster.

* ``convert(model, precision)``: a new model whose encoder matrix multiplies run in bf16 or int8.
  Only the encoder layers' linear maps change (``Bf16Linear``: bf16 weights, bf16 inputs, fp32
  outputs; int8: dynamic quantization, int8 weights per output channel, activations quantized per
  batch, fbgemm / x86 kernels, CPU only, every layer but the last). The embeddings, LayerNorms,
  the residual stream, attention's softmax and every head stay fp32, so whatever the matrices
  ran in, what the engine pools, normalizes and softmaxes is fp32. The MLM decoder keeps sharing
  the word embeddings' fp32 matrix.
* ``measure(reference, candidate)``: the accuracy gate. Both engines answer a fixed probe set
  (``PROBES``); the candidate passes when every embedding has cosine >= ``MIN_COSINE`` with the
  fp32 one, fill-mask top-5 sets overlap by >= ``MIN_TOP5_OVERLAP`` on average (MLM models),
  and the top label agrees on >= ``MIN_LABEL_AGREEMENT`` of the probes (classifiers).
* ``time_engines(engines)``: the model's own forward pass timed on representative batches (the
  probes, short; and long inputs near the token limit), each engine in turn, repeated, best
  round kept: what ``auto`` compares.
* ``unavailable(precision, device)`` and ``auto_candidates(device)``: which precisions can run
  here at all (int8 has no CUDA kernels), and which ``auto`` tries (bf16 only where the hardware
  multiplies it natively: on a CPU without ``avx512_bf16`` / AMX torch emulates it, several times
  slower than fp32, and timing it would only lengthen the load).

``app.loading.choose_precision`` puts these together at every load: ``auto`` serves the fastest
candidate that is at least ``MIN_SPEEDUP`` times as fast as fp32 and passes its gate, else fp32;
a configured bf16 or int8 serves if it passes its gate, whatever its speed. ``/info`` shows the
timings, the gates and the reason.

Deliberately not here: fp16 (no CPU kernels worth having; on GPU bf16 is the safer 16-bit
choice for BERT's activations), static quantization (needs calibration data), int8 on CUDA,
and the loading itself (``app.loading``).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine import Engine
from app.jobs import ClassifyJob, EmbedJob, FillMaskJob, Job
from model.hardware import native_bf16_cpu

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
REDUCED = ("bf16", "int8")  # what auto may choose instead of fp32, in order of preference on ties
MIN_COSINE = 0.999
MIN_TOP5_OVERLAP = 0.95
MIN_LABEL_AGREEMENT = 0.95
# auto takes a reduced precision only when it is clearly faster: below this, timing noise and
# the answers' small deltas are not worth it.
MIN_SPEEDUP = 1.2
# Timing at load: at least MIN_ROUNDS interleaved rounds, more while within the budget.
MIN_ROUNDS, MAX_ROUNDS, TIMING_BUDGET_S = 3, 5, 0.5
# The long timing batch: this many inputs near the token limit.
LONG_INPUTS = 8

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


def check_precision(requested: str) -> None:
    """ValueError unless ``requested`` is one of ``PRECISIONS``."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")


def unavailable(precision: str, device: torch.device | str = "cpu") -> str | None:
    """Why ``precision`` cannot run on ``device`` (None: it can, natively or emulated)."""
    device = torch.device(device)
    if precision == "int8":
        if device.type != "cpu":
            return f"int8 (dynamic quantization) has no {device.type} kernels"
        engines = torch.backends.quantized.supported_engines
        if not {"fbgemm", "x86", "onednn"} & set(engines):
            return "this torch build has no int8 CPU kernels (fbgemm / x86 / onednn)"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "the GPU has no bf16"
    return None


def auto_candidates(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """The reduced precisions ``auto`` considers here: name -> None (tried) or why not tried."""
    device = torch.device(device)
    out: dict[str, str | None] = {p: unavailable(p, device) for p in REDUCED}
    if out["bf16"] is None and device.type == "cpu" and not native_bf16_cpu():
        out["bf16"] = (
            "not tried: this CPU has no native bf16 (avx512_bf16 / amx_bf16), so torch would "
            "emulate it, several times slower than fp32"
        )
    return out


class Bf16Linear(nn.Module):
    """A Linear whose matrix multiply runs in bf16: fp32 in, fp32 out, bf16 weights.

    Keeping the layer's input and output fp32 leaves everything around the matrices (residual
    sums, LayerNorms, attention softmax, GELU, pooling) in fp32; only the products are rounded.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = linear.bias
        self.bias = (
            None
            if bias is None
            else nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).float()  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype=bf16"


def _to_bf16(layer: nn.Module) -> nn.Module:
    """``layer`` with every ``nn.Linear`` inside it replaced by a ``Bf16Linear``."""
    for name, child in layer.named_children():
        if isinstance(child, nn.Linear):
            setattr(layer, name, Bf16Linear(child))
        else:
            _to_bf16(child)
    return layer


def convert(model: nn.Module, precision: str) -> nn.Module:
    """A copy of the fp32 ``model`` in ``precision`` (the same object for fp32)."""
    if precision == "fp32":
        return model
    converted = copy.deepcopy(model)
    layers = converted.layers
    if precision == "bf16":
        for layer in layers:
            _to_bf16(layer)
        return converted
    if precision == "int8":
        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao, which has no eager
            # dynamic int8 path on CPU as fast as fbgemm's yet; the API still works in torch 2.x.
            warnings.simplefilter("ignore")
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            # Every layer but the last: the last one feeds the heads directly, so its rounding
            # errors reach the answers unattenuated, and on the fill-mask fast path it runs at
            # the [MASK] positions only, where int8 would save next to nothing.
            for i in range(len(layers) - 1):
                layers[i] = torch.ao.quantization.quantize_dynamic(
                    layers[i], {nn.Linear: qconfig}, dtype=torch.qint8
                )
        return converted
    raise ValueError(f"cannot convert a model to {precision!r}")


def measure(reference: Engine, candidate: Engine) -> GateReport:
    """Run the probe set through both engines and compare the answers (see the module doc)."""
    jobs: list[Job] = [
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


def timing_jobs(engine: Engine) -> list[list[Job]]:
    """Representative batches, as embedding jobs: the probes (short inputs) as one batch, and
    ``LONG_INPUTS`` long ones (all the probes run together: ~180 tokens, cut at the limit)."""
    short = engine.encode_many(list(PROBES), truncate=True)
    text = " ".join(p.replace("[MASK]", "word") for p in PROBES)
    long = engine.encode_many([text] * LONG_INPUTS, truncate=True)
    return [[EmbedJob(inputs=short, normalize=False)], [EmbedJob(inputs=long, normalize=False)]]


def time_engines(engines: dict[str, Engine]) -> dict[str, float]:
    """Seconds one round of the timing batches takes on each engine (its best round).

    Rounds interleave the engines, so a burst of load from elsewhere slows all of them alike;
    one warm-up round first (kernel selection, weight packing, first-touch allocations).
    """
    batches = timing_jobs(next(iter(engines.values())))
    best = dict.fromkeys(engines, float("inf"))
    t_start = time.perf_counter()
    for round_ in range(MAX_ROUNDS + 1):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            for jobs in batches:
                engine.run_batch(jobs)
            if round_ > 0:  # round 0 is the warm-up
                best[name] = min(best[name], time.perf_counter() - t0)
        if round_ >= MIN_ROUNDS and time.perf_counter() - t_start > TIMING_BUDGET_S:
            break
    return best
