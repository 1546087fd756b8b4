"""Serving precision: run a loaded fp32 model in bf16 or int8, only where it answers like fp32
and, for ``auto``, only where it is measured faster.

* ``convert(model, precision, calibration=...)``: a new model whose encoder matrix multiplies run
  in bf16 or int8. Only the encoder layers' linear maps change (``Bf16Linear``: bf16 weights,
  bf16 inputs, fp32 outputs; int8: ``app.quantization``, per-channel int8 weights, SmoothQuant
  on the LayerNorm-fed matmuls calibrated on ``calibration``, one activation scale per token
  after GELU). The embeddings, LayerNorms, the residual stream, attention's softmax and every
  head stay fp32, so whatever the matrices ran in, what the engine pools, normalizes and
  softmaxes is fp32. The MLM decoder keeps sharing the word embeddings' fp32 matrix.
* ``measure(reference, candidate)``: the accuracy gate, on the probe set of ``app/probes.json``
  (held-out WordNet glosses, written by ``python -m training.evaluation.probe_set``): fill-mask sentences,
  two long inputs cut at the token limit, and (query, document) retrieval pairs. A candidate
  passes when, against fp32,
    - every embedding (sentences, long inputs, queries, documents) has cosine >= ``MIN_COSINE``;
    - retrieval recall@10 (each query finds its document among the documents, by cosine) is
      within ``MAX_RECALL_DELTA`` of fp32's;
    - fill-mask top-5 sets overlap by >= ``MIN_TOP5_OVERLAP`` on average and top-1 agrees on
      >= ``MIN_TOP1_AGREEMENT`` of the masks (MLM models);
    - the top label agrees on >= ``MIN_LABEL_AGREEMENT`` of the inputs (classifiers: the
      sentences, long inputs and retrieval queries);
    - a reranker (one label, where the top label always agrees), over ``RERANK_QUERIES`` x
      ``RERANK_DOCUMENTS`` scored pairs: every score within ``MAX_SCORE_ERROR`` of the fp32
      scores' standard deviation, each query's best document kept (>= ``MIN_TOP1_AGREEMENT``)
      and the order of its documents' pairs kept (>= ``MIN_PAIR_ORDER``), where documents
      whose fp32 scores differ by at most ``RERANK_TIE`` of that deviation are ties.
  fp32's answers are computed once per load (``gate_run``); the set is the same for every
  model, so a gate means the same thing on each (its cost grows with the model: see
  docs/precision.md).
* ``time_engines(engines)``: the model's own forward pass timed on representative batches (the
  fill-mask probes, short; and long inputs near the token limit), each engine in turn,
  repeated, best round kept: what ``auto`` compares.
* ``unavailable(precision, device)`` and ``auto_candidates(device)``: which precisions can run
  here at all (int8 has no CUDA kernels), and which ``auto`` tries (bf16 only where the hardware
  multiplies it natively: on a CPU without ``avx512_bf16`` / AMX torch emulates it, several times
  slower than fp32, and timing it would only lengthen the load).

``app.loading.choose_precision`` puts these together at every load: ``auto`` serves the fastest
candidate that is at least ``MIN_SPEEDUP`` times as fast as fp32 and passes its gate, else fp32;
a configured bf16 or int8 serves if it passes its gate, whatever its speed. ``/info`` shows the
timings, the gates and the reason.

Deliberately not here: fp16 (no CPU kernels worth having; on GPU bf16 is the safer 16-bit
choice for BERT's activations), how int8 quantizes (``app.quantization``), int8 on CUDA, and
the loading itself (``app.loading``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app import quantization
from app.engine import Engine
from app.jobs import ClassifyJob, EmbedJob, FillMaskJob, Job
from model.hardware import native_bf16_cpu

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
REDUCED = ("bf16", "int8")  # what auto may choose instead of fp32, in order of preference on ties
MIN_COSINE = 0.995
RECALL_K = 10
MAX_RECALL_DELTA = 0.01  # recall@10 may move by at most 1 point, either way
MIN_TOP5_OVERLAP = 0.95
MIN_TOP1_AGREEMENT = 0.97
MIN_LABEL_AGREEMENT = 0.99
# A reranker (one label: argmax over one label always agrees) is gated on its scores and
# rankings instead: RERANK_QUERIES probe queries, each scored against RERANK_DOCUMENTS documents
# (its own and others). Every score must stay within MAX_SCORE_ERROR x the standard deviation
# of fp32's scores (the relative error the embeddings' cosine allows: 0.995 is a difference
# vector of ~10% of the vector's length), and each query keep its best document
# (MIN_TOP1_AGREEMENT) and the order of its document pairs (MIN_PAIR_ORDER). Documents whose
# fp32 scores differ by at most RERANK_TIE x that deviation are ties, in either order: without
# it, 2 or 3 near-ties in 40 queries decide the gate (on checkpoints/reranker bf16, with half
# int8's score error, swapped three best documents 0.08-0.11 logits apart, scores' deviation
# 6.4, and failed, while int8 passed or failed by the batch it ran in).
RERANK_QUERIES, RERANK_DOCUMENTS = 40, 6
MIN_PAIR_ORDER = 0.97
MAX_SCORE_ERROR = 0.1
RERANK_TIE = 0.02
# auto takes a reduced precision only when it is clearly faster: below this, timing noise and
# the answers' small deltas are not worth it.
MIN_SPEEDUP = 1.2
# Timing at load (after the gate, so every engine is warm): at least MIN_ROUNDS interleaved
# rounds, more while within the budget. Where fp32's gate run alone took TIMING_BUDGET_S or
# more (a BERT-base), the gate runs themselves are the timing: seconds of identical work on
# each engine, long enough that a cold start or a burst of load elsewhere is a small part.
MIN_ROUNDS, MAX_ROUNDS, TIMING_BUDGET_S = 2, 7, 1.0
# The timing batches: the fill-mask probes (short), and this many inputs at the token limit.
LONG_INPUTS = 1
GATE_BATCH = 32  # inputs per forward batch of the gate, the server's default max_batch_size
PROBES_FILE = Path(__file__).with_name("probes.json")
PROBES_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ProbeSet:
    """The gate's texts (``app/probes.json``; see ``training.evaluation.probe_set``)."""

    masked: tuple[str, ...]  # one [MASK] each
    texts: tuple[str, ...]  # the same sentences unmasked
    long: tuple[str, ...]  # far past any token limit; a [MASK] every few dozen words
    queries: tuple[str, ...]  # retrieval: queries[i] belongs with documents[i]
    documents: tuple[str, ...]
    calibration: tuple[str, ...]  # training-split text for int8's activation ranges


@functools.cache
def probe_set(path: Path = PROBES_FILE) -> ProbeSet:
    """The probe set, read once; ValueError if the file is not one ``training.evaluation.probe_set`` wrote."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("format") != PROBES_FORMAT:
        raise ValueError(f"{path}: format {raw.get('format')!r}, expected {PROBES_FORMAT}")
    return ProbeSet(
        masked=tuple(p["masked"] for p in raw["fill_mask"]),
        texts=tuple(p["text"] for p in raw["fill_mask"]),
        long=tuple(raw["long"]),
        queries=tuple(p["query"] for p in raw["retrieval"]),
        documents=tuple(p["document"] for p in raw["retrieval"]),
        calibration=tuple(raw["calibration"]),
    )


PROBES = probe_set().masked  # the fill-mask probes, for callers that want plain sentences


@dataclasses.dataclass(frozen=True)
class GateReport:
    """How a reduced precision answered the probes compared with fp32."""

    min_cosine: float
    recall: float | None = None  # the candidate's recall@10 (None: no retrieval pairs)
    reference_recall: float | None = None  # fp32's
    top5_overlap: float | None = None  # None without an MLM head
    top1_agreement: float | None = None
    label_agreement: float | None = None  # None without a classifier (or for a reranker)
    rerank_top1: float | None = None  # a reranker's best document unchanged, per query
    rerank_pair_order: float | None = None  # a reranker's document pairs in the same order
    rerank_score_error: float | None = None  # max |score - fp32's| / std of fp32's scores
    retrieval_pairs: int = 0
    seconds: float = 0.0  # the candidate's gate run

    @property
    def recall_delta(self) -> float | None:
        if self.recall is None or self.reference_recall is None:
            return None
        return self.recall - self.reference_recall

    @property
    def passed(self) -> bool:
        delta = self.recall_delta
        return (
            self.min_cosine >= MIN_COSINE
            and (delta is None or abs(delta) <= MAX_RECALL_DELTA + 1e-9)
            and (self.top5_overlap is None or self.top5_overlap >= MIN_TOP5_OVERLAP)
            and (self.top1_agreement is None or self.top1_agreement >= MIN_TOP1_AGREEMENT)
            and (self.label_agreement is None or self.label_agreement >= MIN_LABEL_AGREEMENT)
            and (self.rerank_top1 is None or self.rerank_top1 >= MIN_TOP1_AGREEMENT)
            and (self.rerank_pair_order is None or self.rerank_pair_order >= MIN_PAIR_ORDER)
            and (self.rerank_score_error is None or self.rerank_score_error <= MAX_SCORE_ERROR)
        )

    def as_dict(self) -> dict[str, Any]:
        def r(x: float | None, digits: int = 4) -> float | None:
            return None if x is None else round(x, digits)

        return {
            "min_cosine": round(self.min_cosine, 6),
            "recall_at_10": r(self.recall),
            "reference_recall_at_10": r(self.reference_recall),
            "recall_delta": r(self.recall_delta),
            "retrieval_pairs": self.retrieval_pairs,
            "top5_overlap": r(self.top5_overlap),
            "top1_agreement": r(self.top1_agreement),
            "label_agreement": r(self.label_agreement),
            "rerank_top1": r(self.rerank_top1),
            "rerank_pair_order": r(self.rerank_pair_order),
            "rerank_score_error": r(self.rerank_score_error),
            "seconds": round(self.seconds, 3),
            "thresholds": {
                "min_cosine": MIN_COSINE,
                "max_recall_delta": MAX_RECALL_DELTA,
                "top5_overlap": MIN_TOP5_OVERLAP,
                "top1_agreement": MIN_TOP1_AGREEMENT,
                "label_agreement": MIN_LABEL_AGREEMENT,
                "rerank_top1": MIN_TOP1_AGREEMENT,
                "rerank_pair_order": MIN_PAIR_ORDER,
                "rerank_score_error": MAX_SCORE_ERROR,
                "rerank_tie": RERANK_TIE,
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
        if quantization.kernel_engine() is None:
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


def calibration_batches(engine: Engine) -> list[tuple[Tensor, Tensor]]:
    """The probe set's calibration text as (ids, attention mask) batches for ``engine``'s model."""
    encoded = engine.encode_many(list(probe_set().calibration), truncate=True)
    T = max(len(e) for e in encoded)
    pad = engine.tokenizer.pad_token_id
    ids = torch.tensor([e.ids + [pad] * (T - len(e)) for e in encoded])  # (B, T)
    mask = torch.tensor([[1] * len(e) + [0] * (T - len(e)) for e in encoded])  # (B, T)
    return [(ids, mask)]


def convert(
    model: nn.Module,
    precision: str,
    *,
    calibration: Sequence[tuple[Tensor, Tensor]] = (),
    recipe: quantization.Recipe = quantization.DEFAULT_RECIPE,
) -> nn.Module:
    """A copy of the fp32 ``model`` in ``precision`` (the same object for fp32).

    int8 smooths its LayerNorm-fed matmuls with activation ranges measured on ``calibration``
    ((ids, attention mask) batches; ``calibration_batches``); without it, nothing is smoothed.
    """
    if precision == "fp32":
        return model
    if precision == "bf16":
        converted = copy.deepcopy(model)
        for layer in converted.layers:
            _to_bf16(layer)
        return converted
    if precision == "int8":
        ranges = (
            quantization.activation_ranges(model, calibration, recipe.smooth)
            if calibration and recipe.smooth
            else None
        )
        return quantization.quantize(model, ranges, recipe)
    raise ValueError(f"cannot convert a model to {precision!r}")


def describe(precision: str) -> dict[str, Any]:
    """What ``convert`` does for ``precision``, for ``/info`` (int8: its recipe)."""
    if precision == "int8":
        return {"int8": quantization.DEFAULT_RECIPE.as_dict()}
    return {}


# --- the gate ---------------------------------------------------------------------------------


@dataclasses.dataclass
class GateAnswers:
    """What one engine answered on the probe set (``gate_run``), and how long it took."""

    core: list[Any]  # results of the core jobs: embeddings, then fill-mask / classify
    retrieval: list[list[float]]  # embeddings of the queries, then of the documents
    seconds: float

    @property
    def pairs(self) -> int:
        return len(self.retrieval) // 2


def gate_jobs(engine: Engine) -> list[Job]:
    """What the gate runs besides retrieval and reranking: embeddings of the probe sentences
    and long inputs; fill-mask and classification where the model has the head."""
    probes = probe_set()
    texts = list(probes.texts)
    long = engine.encode_many(list(probes.long), truncate=True)
    jobs: list[Job] = [
        EmbedJob(
            inputs=engine.encode_many(texts, truncate=True) + long,
            pooling=engine.capabilities.pooling,
            normalize=False,
        )
    ]
    if engine.can_fill_mask:
        masked = engine.encode_fill_mask(list(probes.masked) + list(probes.long), truncate=True)
        jobs.append(FillMaskJob(inputs=masked, top_k=5))
    if engine.capabilities.rerank:
        pairs = rerank_pairs()
        encoded = engine.encode_pairs(pairs, truncate=True, strategy="only_second")
        jobs.append(ClassifyJob(inputs=encoded, function="none"))
    elif engine.can_classify:
        # With the retrieval queries too: 250 inputs, so that one label in a hundred is visible.
        more = texts + list(probes.queries)
        jobs.append(ClassifyJob(inputs=engine.encode_many(more, truncate=True) + long))
    return jobs


def rerank_pairs() -> list[tuple[str, str]]:
    """RERANK_QUERIES probe queries, each with RERANK_DOCUMENTS documents (its own first, then
    others spread over the set), as (query, document) pairs in query order."""
    probes = probe_set()
    n = len(probes.documents)
    return [
        (probes.queries[i], probes.documents[(i + 7 * j) % n])
        for i in range(RERANK_QUERIES)
        for j in range(RERANK_DOCUMENTS)
    ]


def ranking_agreement(want: Tensor, got: Tensor, tie: float = 0.0) -> tuple[float, float]:
    """(best document kept, document pairs kept in order), each a fraction, for score matrices
    (Q, D). Documents whose ``want`` scores differ by at most ``tie`` are ties: either may be
    best, either order is kept (a query or pair of nothing but ties counts as kept).
    Example: [[3, 2, 1]] vs [[3, 1, 2]] -> (1.0, 2/3); with tie=1, (1.0, 1.0)."""
    best = got.argmax(dim=1, keepdim=True)  # (Q, 1)
    kept = want.gather(1, best).squeeze(1) >= want.max(dim=1).values - tie  # (Q,)
    i, j = torch.triu_indices(want.shape[1], want.shape[1], offset=1)
    gap = want[:, i] - want[:, j]  # (Q, pairs)
    same = torch.sign(gap) == torch.sign(got[:, i] - got[:, j])
    counted = gap.abs() > tie
    order = float((same & counted).sum() / counted.sum()) if bool(counted.any()) else 1.0
    return float(kept.double().mean()), order


def _retrieval_job(engine: Engine) -> EmbedJob:
    probes = probe_set()
    return EmbedJob(
        inputs=engine.encode_many(list(probes.queries + probes.documents), truncate=True),
        pooling=engine.capabilities.pooling,
        normalize=False,
    )


def _in_batches(engine: Engine, jobs: list[Job]) -> list[Any]:
    """``engine.run_batch(jobs)``, ``GATE_BATCH`` inputs at a time, as the server's batches
    come (its chunk planner is quadratic in a batch's inputs); results joined per job."""
    results: list[Any] = [[] for _ in jobs]
    for start in range(0, max(len(job.inputs) for job in jobs), GATE_BATCH):
        part = [dataclasses.replace(j, inputs=j.inputs[start : start + GATE_BATCH]) for j in jobs]
        keep = [i for i, j in enumerate(part) if j.inputs]
        for i, result in zip(keep, engine.run_batch([part[i] for i in keep]), strict=True):
            results[i].extend(result)
    return results


def gate_run(engine: Engine) -> GateAnswers:
    """``engine``'s answers on the whole probe set."""
    t0 = time.perf_counter()
    core = _in_batches(engine, gate_jobs(engine))
    retrieval = _in_batches(engine, [_retrieval_job(engine)])[0]
    return GateAnswers(core, retrieval, time.perf_counter() - t0)


def recall_at_k(queries: Tensor, documents: Tensor, k: int = RECALL_K) -> float:
    """Mean recall@k of query i finding document i by cosine, ties counted in expectation.

    With g documents scoring strictly above its own and t others tied with it, a query scores
    clamp((k - g) / (t + 1), 0, 1) (as ``training.retrieval`` counts). Example: scores
    [[0.9, 0.5, 0.5]] for query 1 (own score 0.5, g=1, t=1) at k=2 -> (2 - 1) / 2 = 0.5.
    """
    q, d = F.normalize(queries, dim=-1), F.normalize(documents, dim=-1)
    scores = q @ d.T  # (Q, Q)
    own = scores.diagonal()[:, None]  # (Q, 1)
    higher = (scores > own).sum(dim=1).double()  # (Q,)
    tied = (scores == own).sum(dim=1).double() - 1.0  # (Q,)
    return float(((k - higher) / (tied + 1.0)).clamp(0.0, 1.0).mean())


def measure(reference: Engine, candidate: Engine, answers: GateAnswers | None = None) -> GateReport:
    """Run the probe set through ``candidate`` and compare with fp32 ``reference``'s answers
    (``answers``, computed here if not given; see the module doc)."""
    want = answers if answers is not None else gate_run(reference)
    got = gate_run(candidate)
    cosines = [F.cosine_similarity(torch.tensor(want.core[0]), torch.tensor(got.core[0]), dim=-1)]
    a, b = torch.tensor(want.retrieval), torch.tensor(got.retrieval)  # (2P, H)
    cosines.append(F.cosine_similarity(a, b, dim=-1))
    n = want.pairs
    ref_recall, recall = recall_at_k(a[:n], a[n:]), recall_at_k(b[:n], b[n:])
    top5 = top1 = labels = rerank_top1 = pair_order = score_error = None
    for w, g in zip(want.core[1:], got.core[1:], strict=True):
        if reference.capabilities.rerank and not isinstance(w[0][0], list):  # one score a pair
            shape = (RERANK_QUERIES, RERANK_DOCUMENTS)
            a_s, b_s = (torch.tensor([row[0] for row in x]).view(shape) for x in (w, g))
            spread = float(a_s.std()) or 1.0  # a constant scorer: compare absolute errors
            score_error = float((b_s - a_s).abs().max()) / spread
            rerank_top1, pair_order = ranking_agreement(a_s, b_s, RERANK_TIE * spread)
            continue
        if w and isinstance(w[0][0], list):  # fill-mask: per input, per mask, (id, p) best first
            masks = [
                (wm, gm) for wi, gi in zip(w, g, strict=True) for wm, gm in zip(wi, gi, strict=True)
            ]
            top5 = sum(
                len({t for t, _ in wm} & {t for t, _ in gm}) / len(wm) for wm, gm in masks
            ) / len(masks)
            top1 = sum(wm[0][0] == gm[0][0] for wm, gm in masks) / len(masks)
        else:  # classification: scores per label
            agree = [
                max(range(len(wr)), key=wr.__getitem__) == max(range(len(gr)), key=gr.__getitem__)
                for wr, gr in zip(w, g, strict=True)
            ]
            labels = sum(agree) / len(agree)
    return GateReport(
        min_cosine=float(torch.cat(cosines).min()),
        recall=recall,
        reference_recall=ref_recall,
        top5_overlap=top5,
        top1_agreement=top1,
        label_agreement=labels,
        rerank_top1=rerank_top1,
        rerank_pair_order=pair_order,
        rerank_score_error=score_error,
        retrieval_pairs=want.pairs,
        seconds=got.seconds,
    )


# --- timing -----------------------------------------------------------------------------------


def timing_jobs(engine: Engine) -> list[list[Job]]:
    """Representative batches, as embedding jobs: the fill-mask probes (short inputs) as one
    batch, and ``LONG_INPUTS`` long ones cut at the token limit."""
    short = engine.encode_many(list(PROBES), truncate=True)
    long = engine.encode_many(list(probe_set().long[:1]) * LONG_INPUTS, truncate=True)
    return [[EmbedJob(inputs=short, normalize=False)], [EmbedJob(inputs=long, normalize=False)]]


def time_engines(
    engines: dict[str, Engine], *, warm: bool = False, gate_seconds: dict[str, float] | None = None
) -> dict[str, float]:
    """Seconds one round of the timing batches takes on each engine (its best round).

    Rounds interleave the engines, so a burst of load from elsewhere slows all of them alike.
    Unless ``warm`` (every engine has just run, as after the gate), one untimed round first
    (kernel selection, weight packing, first-touch allocations). ``gate_seconds``: each engine's
    gate run, identical work; where fp32's took ``TIMING_BUDGET_S`` or more, those are the
    answer and nothing more runs.
    """
    if gate_seconds is not None and gate_seconds["fp32"] >= TIMING_BUDGET_S:
        return {name: gate_seconds[name] for name in engines}
    batches = timing_jobs(next(iter(engines.values())))
    best = dict.fromkeys(engines, float("inf"))
    t_start = time.perf_counter()
    first = 1 if warm else 0
    for round_ in range(first, MAX_ROUNDS + 1):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            for jobs in batches:
                engine.run_batch(jobs)
            if round_ > 0:  # round 0 is the warm-up
                best[name] = min(best[name], time.perf_counter() - t0)
        if round_ >= MIN_ROUNDS and time.perf_counter() - t_start > TIMING_BUDGET_S:
            break
    return best
