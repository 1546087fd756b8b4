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
    ``precision`` (``app.precision.PRECISIONS``) is tried after the fp32 model passed its self
    test, and kept only if it passes the accuracy gate against fp32; else fp32 serves.
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
    engine = _with_precision(engine, precision)
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


def _with_precision(engine: Engine, requested: str) -> Engine:
    """The fp32 ``engine`` in the requested precision if that passes its accuracy gate."""
    target, reason = precisions.resolve(requested)
    report: dict[str, Any] = {"requested": requested, "reason": reason, "gate": None}
    if target == "fp32":
        engine.precision_report = report
        return engine
    candidate = dataclasses.replace(
        engine, model=precisions.convert(engine.model, target), precision=target
    )
    gate = precisions.measure(engine, candidate)
    report["gate"] = gate.as_dict()
    if gate.passed:
        candidate.precision_report = report
        return candidate
    logger.warning(
        "%s in %s fails its accuracy gate against fp32 (%s); serving fp32",
        engine.path,
        target,
        gate.as_dict(),
    )
    engine.precision_report = {**report, "reason": f"{target} failed the accuracy gate"}
    return engine
