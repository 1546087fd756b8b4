"""Helpers for the training tests: a tiny corpus, a tiny vocabulary and tiny run settings.

Not a test module (no ``test_`` prefix); imported by tests/training/ and tests/reliability/.
Everything is sized so that a training run of a few dozen steps takes about a second on 2 cores:
hidden 32, 2 layers, rows of 32 tokens, batches of 8, a vocabulary of ~600 tokens.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenization import WordPieceTokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


def corpus_lines(n: int = 400, *, start: int = 0) -> list[str]:
    """`n` WordNet glosses and (a quarter as many) Python-docs lines, from `start` on."""
    out: list[str] = []
    for name, count in (("wordnet.train.txt", n - n // 4), ("pydocs.train.txt", n // 4)):
        with (DATA / name).open(encoding="utf-8") as f:
            lines = [line for _, line in zip(range(start + count), f, strict=False)]
        out += [line.rstrip("\n") for line in lines[start:]]
    return out


def write_corpus(path: Path, n: int = 400, *, start: int = 0) -> Path:
    path.write_text("\n".join(corpus_lines(n, start=start)) + "\n", encoding="utf-8")
    return path


@functools.cache
def tiny_tokenizer() -> WordPieceTokenizer:
    """A ~600-token vocabulary learned from the first 400 corpus lines (cached per session)."""
    with tempfile.TemporaryDirectory() as d:
        corpus = write_corpus(Path(d) / "corpus.txt", 400)
        return WordPieceTokenizer.train([corpus], vocab_size=600, min_frequency=2)


def tiny_vocab_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tiny_tokenizer().save_pretrained(directory)
    return directory


TINY_MODEL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.1,  # on, so that exact resume also covers the dropout RNG
    "attention_probs_dropout_prob": 0.1,
}

TINY_TRAIN = {
    "max_seq_length": 32,
    "batch_size": 8,
    "lr": 1e-2,
    "warmup_fraction": 0.1,
    "log_every": 2,
    "eval_every": 0,
    "save_every": 0,
    "eval_batch_size": 16,
    "eval_max_sequences": 64,
    "progress_bar": False,
    "tensorboard": False,
    "plot": False,
    "precision": "fp32",
    "device": "cpu",
    "num_threads": 1,  # tiny tensors: a second thread only adds synchronisation
}


# bert-finetune settings of a run of a few dozen steps (tests/training/finetune/).
FINETUNE_QUICK = {
    "batch_size": 8,
    "lr": 2e-3,
    "warmup_fraction": 0.1,
    "log_every": 2,
    "eval_batch_size": 32,
    "max_length": 32,
    "progress_bar": False,
    "tensorboard": False,
    "plot": False,
    "precision": "fp32",
    "device": "cpu",
    "num_threads": 1,
}


def write_config(path: Path, model: dict | None = None, train: dict | None = None) -> Path:
    import yaml

    data = {"model": {**TINY_MODEL, **(model or {})}, "train": {**TINY_TRAIN, **(train or {})}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def cli_args(tmp: Path, out: Path, *extra: str, valid: bool = True) -> list[str]:
    """bert-train arguments for a tiny run in `tmp` (corpus, vocab and config made on demand)."""
    corpus = tmp / "train.txt"
    if not corpus.exists():
        write_corpus(corpus, 300)
    vdir = tmp / "vocab"
    if not (vdir / "vocab.txt").exists():
        tiny_vocab_dir(vdir)
    config = tmp / "tiny.yaml"
    if not config.exists():
        write_config(config)
    args = ["--config", str(config), "--corpus", str(corpus), "--output-dir", str(out)]
    args += ["--vocab", str(vdir), "--cache_dir", str(tmp / "cache"), "--log-level", "WARNING"]
    if valid:
        vfile = tmp / "valid.txt"
        if not vfile.exists():
            write_corpus(vfile, 60, start=2000)
        args += ["--valid", str(vfile)]
    return [*args, *extra]


def run_ddp(tmp: Path, out: Path, *extra: str, nproc: int = 2) -> None:
    """Run ``bert-train`` under torchrun with ``nproc`` CPU processes (gloo) into ``out``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", "-m", "training.pretrain.cli", *cli_args(tmp, out, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
