"""Helpers for the tests against transformers and sentence-transformers: tiny random BERT
directories written by those libraries themselves, offline.

* ``vocabulary(...)``: a WordPiece vocabulary learned from the bundled corpus, padded to any size
  (BERT's 30,522) with ``[unusedN]`` tokens, its ``[PAD]`` at any id, cased or not.
* ``hf_bert_dir(...)``: a transformers ``BertForMaskedLM`` / ``BertForPreTraining`` / ``BertModel``
  with weights drawn wider than BERT's init (so predictions are peaked and a comparison compares
  something), saved with ``save_pretrained`` together with transformers' own tokenizer (which in
  transformers 5 writes ``tokenizer.json``, not ``vocab.txt``).
* ``st_dir(...)``: a sentence-transformers directory (``SentenceTransformer.save``) around a
  ``BertModel`` directory, with a given pooling, with or without ``Normalize``.

Nothing is downloaded: transformers builds its tokenizer from a local directory (the vocabulary
size is asserted, since transformers 5 silently ignores a ``vocab_file`` argument) and
``offline()`` switches the hub client off. Not a test module (no ``test_`` prefix).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import torch

from tokenization import WordPieceTokenizer

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "wordnet.train.txt"
BERT_VOCAB_SIZE = 30522
SIZES = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
)
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# sentence-transformers' names of our poolings.
ST_POOLING = {
    "mean": "mean",
    "cls": "cls",
    "max": "max",
    "mean_sqrt_len": "mean_sqrt_len_tokens",
}


def offline() -> None:
    """No hub access from this process (set before any model is built or loaded)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


@functools.cache
def _learned(lowercase: bool, lines: int = 600, size: int = 1500) -> tuple[str, ...]:
    with tempfile.TemporaryDirectory() as d:
        corpus = Path(d) / "corpus.txt"
        with CORPUS.open(encoding="utf-8") as f:
            corpus.write_text("".join(next(f) for _ in range(lines)), encoding="utf-8")
        tok = WordPieceTokenizer.train([corpus], vocab_size=size, lowercase=lowercase)
    return tuple(t for t in tok.vocab if t not in SPECIALS)


def vocabulary(size: int = 1500, *, pad_id: int = 0, lowercase: bool = True) -> list[str]:
    """A WordPiece vocabulary of exactly ``size`` tokens with ``[PAD]`` at ``pad_id``."""
    others = [t for t in SPECIALS if t != "[PAD]"]
    head = [*others[:pad_id], "[PAD]", *others[pad_id:]]
    learned = list(_learned(lowercase))[: size - len(head)]
    filler = [f"[unused{i}]" for i in range(size - len(head) - len(learned))]
    return [*head, *learned, *filler]


def hf_tokenizer(tokens: list[str], *, lowercase: bool = True):
    """transformers' tokenizer for ``tokens`` (AutoTokenizer, from a local directory)."""
    import transformers

    with tempfile.TemporaryDirectory() as d:
        WordPieceTokenizer(tokens, lowercase=lowercase).save_pretrained(d)
        tok = transformers.AutoTokenizer.from_pretrained(d)
    assert len(tok) == len(tokens)  # transformers 5 can silently fall back to 5 tokens
    assert tok.pad_token_id == tokens.index("[PAD]")
    return tok


def _widen(model: torch.nn.Module, seed: int) -> None:
    """Weights wider than BERT's init (std 0.02), so that outputs are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def hf_bert_dir(
    directory: Path,
    *,
    head: str = "BertForMaskedLM",
    vocab_size: int = 1500,
    pad_id: int = 0,
    lowercase: bool = True,
    seed: int = 0,
) -> Path:
    """A transformers BERT directory (``head``: BertForMaskedLM, BertForPreTraining or
    BertModel) written by transformers' save_pretrained, model and tokenizer."""
    import transformers

    tokens = vocabulary(vocab_size, pad_id=pad_id, lowercase=lowercase)
    tok = hf_tokenizer(tokens, lowercase=lowercase)
    config = transformers.BertConfig(vocab_size=vocab_size, pad_token_id=pad_id, **SIZES)
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config).eval()
    _widen(model, seed)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def st_dir(directory: Path, base: Path, *, pooling: str = "mean", normalize: bool = True) -> Path:
    """A sentence-transformers directory around the BertModel directory ``base``."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(base))
    modules = [transformer, models.Pooling(SIZES["hidden_size"], ST_POOLING[pooling])]
    if normalize:
        modules.append(models.Normalize())
    if directory.exists():
        shutil.rmtree(directory)
    SentenceTransformer(modules=modules, device="cpu").save(str(directory))
    return directory
