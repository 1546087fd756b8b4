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

Results: bench/results/study_int8.json (``--diagnose``: study_int8_diagnosis.json) and markdown
tables on stdout.
Deliberately not here: ONNX Runtime and HTTP (bench/bench_precision.py), GPUs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import random
import shutil
import sys
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
from model import BertConfig, BertForMaskedLM
from model.hardware import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "study_int8.json"
DEFAULT = ROOT / "checkpoints" / "default"
SHAPES = {"mini": (6, 384, 12, 1536), "base": (12, 768, 12, 3072)}  # layers, hidden, heads, I
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")
R = q.Recipe
PT_ALL = q.MATMULS


def random_checkpoint(name: str, workdir: Path) -> Path:
    """A seeded random encoder of shape ``name`` with the default checkpoint's tokenizer."""
    layers, hidden, heads, inter = SHAPES[name]
    cfg = BertConfig(
        vocab_size=8192,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(cfg, mlm_head=False).eval()
    out = workdir / name
    model.save_pretrained(out)
    for f in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(DEFAULT / f, out / f)
    return out


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
        for name, (parent, attr) in q._matmuls(layer).items():
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
        for name, (parent, attr) in q._matmuls(layer).items():
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
                parent, attr = q._matmuls(layer)[name]
                setattr(parent, attr, precisions.Bf16Linear(getattr(*q._matmuls(fp32_layer)[name])))
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


def timing_batches(engine: Engine, n: int, seed: int = 0) -> list:
    """``n`` batches of 32 held-out glosses (lemmas dropped), as the issue's measurement."""
    lines = (ROOT / "data" / "wordnet.valid.txt").read_text(encoding="utf-8").splitlines()
    texts = [line.partition(": ")[2] or line for line in random.Random(seed).sample(lines, 32 * n)]
    return [engine.encode_many(texts[i : i + 32], truncate=True) for i in range(0, len(texts), 32)]


def study(name: str, directory: Path, args: argparse.Namespace) -> dict:
    engine = load_engine(directory, precision="fp32")
    calibration = precisions.calibration_batches(engine)
    reference = precisions.gate_run(engine)
    batches = timing_batches(engine, args.batches)
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
        print(f"[{name}] {label}: {'-' if gate is None else gate.as_dict()}", file=sys.stderr)

    def run(e: Engine) -> None:
        for b in batches:
            e.run_batch([EmbedJob(inputs=b, normalize=False)])

    best = dict.fromkeys(engines, float("inf"))
    for e in engines.values():
        run(e)  # warm-up
    order = list(engines)
    for _ in range(args.rounds):
        random.shuffle(order)
        for label in order:
            t0 = clock()
            run(engines[label])
            best[label] = min(best[label], clock() - t0)
    sentences = 32 * len(batches)
    for row in rows:
        row["sentences_per_s"] = round(sentences / best[row["lever"]], 1)
        row["speedup_vs_fp32"] = round(best["fp32"] / best[row["lever"]], 3)
    cfg = engine.config
    return {
        "model": name,
        "path": str(directory),
        "shape": f"L{cfg.num_hidden_layers} H{cfg.hidden_size} A{cfg.num_attention_heads} "
        f"I{cfg.intermediate_size}",
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
        for parent, attr in q._matmuls(layer).values():
            lin = getattr(parent, attr)
            values, scales = q.Int8Linear(lin.weight, lin.bias).weight_int8()
            with torch.no_grad():
                lin.weight.copy_(values.float() * scales[:, None])
    out["weights_only"] = gate(weights_only)
    return out


def diagnosis_markdown(d: dict) -> str:
    lines = [
        f"**{d['model']}: activation ranges** (max |x| per input channel over the calibration "
        "text: the largest, the median channel's, their ratio, the top channels)",
        "",
        "| layer | matmul | max | median | ratio | top channels |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in d["ranges"]:
        lines.append(
            f"| {r['layer']} | {r['matmul']} | {r['max']} | {r['median']} | {r['ratio']} "
            f"| {r['top_channels']} |"
        )
    lines += [
        "",
        "| only this matmul in int8 (all layers) | per-batch scale | per-token | SQ + per-token |",
        "|---|---|---|---|",
    ]
    for kind, row in d["kinds"].items():
        cells = [f"{v['min_cosine']:.4f} / {v['recall_delta']:+.3f}" for v in row.values()]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "| only this layer in int8 | per-batch, no SQ | served recipe |", "|---|---|---|"]
    for i, row in d["layers"].items():
        cells = [f"{v['min_cosine']:.4f} / {v['recall_delta']:+.3f}" for v in row.values()]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    w = d["weights_only"]
    lines += ["", f"Weights alone rounded to int8 (activations fp32): {w['min_cosine']:.4f} / "
              f"{w['recall_delta']:+.3f} (min cosine / recall@10 delta)."]  # fmt: skip
    return "\n".join(lines)


def markdown(result: dict) -> str:
    lines = [
        f"**{result['model']}** ({result['shape']}, {result['tokens_per_batch']} tokens per "
        f"batch of 32; fp32 recall@10 {result['reference_recall_at_10']:.3f})",
        "",
        "| lever | min cosine | recall@10 delta | top-5 / top-1 | gate | speed vs fp32 |",
        "|---|---:|---:|---|---|---:|",
    ]
    for row in result["levers"]:
        g = row["gate"]
        if g is None:
            lines.append(f"| {row['lever']} | - | - | - | - | 1.00x |")
            continue
        fm = (
            "-"
            if g["top5_overlap"] is None
            else f"{g['top5_overlap']:.3f} / {g['top1_agreement']:.3f}"
        )
        lines.append(
            f"| {row['lever'].strip()} | {g['min_cosine']:.4f} | {g['recall_delta']:+.3f} | {fm} "
            f"| {'pass' if g['passed'] else 'fail'} | {row['speedup_vs_fp32']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="default,mini,base")
    parser.add_argument("--checkpoint", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="first levers only, 2 rounds")
    parser.add_argument(
        "--diagnose", metavar="NAME", help="only the error analysis, of this model (NAME=DIR ok)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batches = 2, 2
    torch.set_num_threads(args.threads)
    if args.diagnose:
        name, _, path = args.diagnose.partition("=")
        d = diagnose(name, DEFAULT if name == "default" and not path else Path(path))
        print(diagnosis_markdown(d))
        out = args.out.with_name(args.out.stem + "_diagnosis.json")
        out.write_text(json.dumps(d, indent=1) + "\n", encoding="utf-8")
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        models: list[tuple[str, Path]] = []
        for name in filter(None, args.models.split(",")):
            path = DEFAULT if name == "default" else random_checkpoint(name, Path(tmp))
            models.append((name, path))
        for spec in args.checkpoint:
            name, _, path = spec.partition("=")
            models.append((name, Path(path)))
        for name, path in models:
            results.append(study(name, path, args))
            print(markdown(results[-1]) + "\n", flush=True)
    out = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": [f for f in FLAGS if f in (cpu_flags() or ())],
        "torch": torch.__version__,
        "threads": args.threads,
        "clock": "thread CPU time" if args.threads == 1 else "wall",
        "rounds": args.rounds,
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
