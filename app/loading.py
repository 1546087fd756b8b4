"""Loading a checkpoint directory into a serving ``Engine``, in the precision it will serve in.

``load_engine(dir, precision=...)`` reads the directory through the one loader,
``model.checkpoint.load_checkpoint`` (ours, a transformers BERT directory of any of the kinds it
recognises, a text classifier among them, or a sentence-transformers one), safetensors only,
every file inside the models root when one is given; checks that the tokenizer fits the
embedding matrix, and runs a test forward pass (``Engine.self_test``). Any failure is a
``CheckpointLoadError`` whose message names the problem. The precision is then chosen
(``app.precision``): a reduced one serves only if it passes its accuracy gate against fp32,
and ``auto`` picks one only where it is measured faster; ``/info`` shows the decision.

Deliberately not here: the computation (``app.engine``), swapping engines (``app.registry``).
Never pickle: a ``pytorch_model.bin`` is refused, convert it with ``bert-convert``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from app import precision as precisions
from app.engine import Engine
from app.errors import CheckpointLoadError
from model import BertForMaskedLM, ModelError, load_checkpoint
from tokenization import WordPieceTokenizer

logger = logging.getLogger(__name__)


def load_engine(
    directory: str | Path,
    *,
    max_input_tokens: int = 512,
    root: Path | None = None,
    precision: str = "fp32",
) -> Engine:
    """Load and validate a checkpoint directory; CheckpointLoadError says what is wrong.

    With ``root`` (a resolved models root), every file read must resolve inside it, so a symlink
    planted in a checkpoint directory cannot make the server read files elsewhere.
    ``precision`` (``app.precision.PRECISIONS``) is chosen after the fp32 model passed its self
    test (``choose_precision``).
    """
    t0 = time.perf_counter()
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointLoadError(f"checkpoint directory not found: {directory}")
    try:
        loaded = load_checkpoint(
            directory,
            BertForMaskedLM,
            tokenizer_factory=WordPieceTokenizer.from_pretrained,
            allow_pickle=False,
            root=root,
        )
    except (ModelError, ValueError, OSError) as e:
        # Model errors usually name the file already; say the path once.
        where = "" if str(directory) in str(e) else f" {directory}"
        raise CheckpointLoadError(f"cannot load checkpoint{where}: {e}") from e
    engine = Engine(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        path=directory,
        sha256=loaded.sha256,
        max_input_tokens=min(max_input_tokens, loaded.capabilities.max_tokens),
        capabilities=loaded.capabilities,
    )
    engine.self_test()
    engine = choose_precision(engine, precision)
    engine.load_seconds = time.perf_counter() - t0
    logger.info(
        "loaded checkpoint %s as %s (%s, %s) in %.2fs",
        directory,
        engine.version,
        engine.capabilities.kind,
        engine.precision,
        engine.load_seconds,
    )
    return engine


def choose_precision(engine: Engine, requested: str) -> Engine:
    """The fp32 ``engine``, or a copy of it in the precision chosen for ``requested``.

    ``fp32`` is taken as is. Every candidate (``auto``: ``app.precision.auto_candidates``; else
    the one configured) is converted (int8 calibrated on the probe set's calibration text) and
    gated against fp32's answers on the probe set; those that pass are timed against fp32 on
    representative batches. A configured ``bf16`` / ``int8`` serves if it passes, whatever its
    speed (a warning says when it is slower than fp32); ``auto`` serves the fastest candidate
    that passes and is ``MIN_SPEEDUP`` times as fast as fp32, else fp32. ``precision_report``
    (``/info``) holds the gates, timings, the reason and what the precision choice cost.
    """
    precisions.check_precision(requested)
    report: dict[str, Any] = {"requested": requested, "reason": "configured", "gate": None}
    if requested == "fp32":
        engine.precision_report = report
        return engine
    t0 = time.perf_counter()
    device = engine.model.device
    if requested == "auto":
        tried = precisions.auto_candidates(device)
    else:
        tried = {requested: precisions.unavailable(requested, device)}
    report["candidates"] = {p: {"not_tried": why} for p, why in tried.items() if why is not None}
    candidates: dict[str, Engine] = {}
    convert_seconds: dict[str, float] = {}
    for p, why in tried.items():
        if why is None:
            t1 = time.perf_counter()
            calibration = precisions.calibration_batches(engine) if p == "int8" else ()
            model = precisions.convert(engine.model, p, calibration=calibration)
            candidates[p] = dataclasses.replace(engine, model=model, precision=p)
            convert_seconds[p] = round(time.perf_counter() - t1, 3)
    if not candidates:
        engine.precision_report = {**report, "reason": _fp32_because(requested, report)}
        return engine
    answers = precisions.gate_run(engine)
    report["gate_reference_seconds"] = round(answers.seconds, 3)
    gates = {p: precisions.measure(engine, c, answers) for p, c in candidates.items()}
    for p in candidates:
        report["candidates"][p] = {
            "gate": gates[p].as_dict(),
            "convert_seconds": convert_seconds[p],
            **precisions.describe(p),
        }
    passed = {p: c for p, c in candidates.items() if gates[p].passed}
    speedup: dict[str, float] = {}
    if passed:
        gate_seconds = {"fp32": answers.seconds, **{p: gates[p].seconds for p in passed}}
        seconds = precisions.time_engines(
            {"fp32": engine, **passed}, warm=True, gate_seconds=gate_seconds
        )
        report["fp32_ms"] = round(seconds["fp32"] * 1000, 3)
        for p in passed:
            speedup[p] = seconds["fp32"] / seconds[p]
            report["candidates"][p].update(
                ms=round(seconds[p] * 1000, 3), speedup=round(speedup[p], 3)
            )
    report["choice_seconds"] = round(time.perf_counter() - t0, 3)
    if requested == "auto":
        good = [p for p in passed if speedup[p] >= precisions.MIN_SPEEDUP]
        if not good:
            engine.precision_report = {**report, "reason": _fp32_because(requested, report)}
            return engine
        chosen = max(good, key=speedup.__getitem__)
        reason = (
            f"auto: {chosen} is {speedup[chosen]:.2f}x as fast as fp32 here and passes its "
            "accuracy gate"
        )
    else:
        chosen = requested
        if chosen not in passed:
            logger.warning(
                "%s in %s fails its accuracy gate against fp32 (%s); serving fp32",
                engine.path,
                chosen,
                gates[chosen].as_dict(),
            )
            report["gate"] = gates[chosen].as_dict()
            engine.precision_report = {
                **report,
                "reason": f"{chosen} failed the accuracy gate{_failed_checks(report['gate'])}",
            }
            return engine
        reason = f"configured ({speedup[chosen]:.2f}x fp32's speed here)"
        if speedup[chosen] < 1.0:
            logger.warning(
                "%s: %s is configured but runs at %.2fx fp32's speed on this machine",
                engine.path,
                chosen,
                speedup[chosen],
            )
    served = candidates[chosen]
    served.precision_report = {**report, "reason": reason, "gate": gates[chosen].as_dict()}
    return served


def _fp32_because(requested: str, report: dict[str, Any]) -> str:
    """Why fp32 serves although ``requested`` asked for another precision, per candidate."""
    why = []
    for p, c in report["candidates"].items():
        if "not_tried" in c:
            why.append(f"{p} {c['not_tried']}")
        elif not c["gate"]["passed"]:
            why.append(f"{p} fails its accuracy gate{_failed_checks(c['gate'])}")
        else:
            why.append(f"{p} is {c['speedup']:.2f}x fp32 (below {precisions.MIN_SPEEDUP}x)")
    return f"{requested}: fp32, as " + "; ".join(why)


def _failed_checks(gate: dict[str, Any]) -> str:
    """Which of a gate's checks failed, as " (min_cosine 0.9812 < 0.995, ...)"."""
    limits = gate["thresholds"]
    failed = [
        f"{name} {gate[name]} < {limits[name]}"
        for name in (
            "min_cosine",
            "top5_overlap",
            "top1_agreement",
            "label_agreement",
            "rerank_top1",
            "rerank_pair_order",
        )
        if gate.get(name) is not None and gate[name] < limits[name]
    ]
    error = gate.get("rerank_score_error")
    if error is not None and error > limits["rerank_score_error"]:
        failed.append(f"rerank_score_error {error} > {limits['rerank_score_error']}")
    delta = gate["recall_delta"]
    if delta is not None and abs(delta) > limits["max_recall_delta"] + 1e-9:
        failed.append(f"recall@10 moved {delta:+.4f}")
    return f" ({', '.join(failed)})" if failed else ""
