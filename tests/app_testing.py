"""Helpers for the app tests: tiny seeded checkpoints and a ServeConfig for them.

Not a test module (no ``test_`` prefix); imported by tests/app/ and tests/reliability/.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from app.config import ServeConfig
from model import BertConfig, BertForMaskedLM
from tokenization import WordPieceTokenizer

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "wordnet.train.txt"


@functools.cache
def tiny_tokenizer(lines: int = 400) -> WordPieceTokenizer:
    """A WordPiece vocabulary trained on the first ``lines`` of the WordNet glosses."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        corpus = Path(d) / "corpus.txt"
        with CORPUS.open(encoding="utf-8") as f:
            corpus.write_text("".join(next(f) for _ in range(lines)), encoding="utf-8")
        return WordPieceTokenizer.train([corpus], vocab_size=1000, min_frequency=2)


def build_checkpoint(
    directory: Path,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 64,
    weight_std: float = 0.3,
    labels: tuple[str, ...] = (),
) -> Path:
    """Write a seeded BertForMaskedLM + tokenizer into ``directory`` (created); with ``labels``,
    a text classifier over them instead (no MLM head: transformers'
    BertForSequenceClassification).

    Weights are drawn wider than BERT's init (std 0.02) so that predictions are peaked and a
    parity test compares something other than near-uniform distributions.
    """
    tok = tiny_tokenizer()
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions,
        labels=labels,
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(cfg, mlm_head=not labels, classifier=bool(labels))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, weight_std)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def serve_config(checkpoint: Path | None, **overrides) -> ServeConfig:
    """A ServeConfig for tests: small limits, one torch thread, short waits."""
    values = {
        "checkpoint": checkpoint,
        "max_wait_ms": 2.0,
        "torch_threads": 1,
        "max_client_batch": 8,
        "max_batch_size": 16,
        "max_batch_tokens": 1024,
        "max_input_tokens": 64,
        "graceful_shutdown_s": 2,
    }
    values.update(overrides)
    return ServeConfig(**values)


def error_of(response: Any, status: int, error_type: str) -> str:
    """Assert ``response`` is ``status`` in the one error shape of ``error_type``; its message."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    return body["error"]


def asgi_post_scope(path: str, headers: list[tuple[bytes, bytes]] = ()) -> dict:
    """The ASGI scope of a JSON ``POST path`` from a loopback client, for tests that drive the
    app directly with their own ``receive`` (streamed bodies, disconnects)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
