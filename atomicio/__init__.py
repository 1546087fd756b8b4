"""Atomic file writes: the one temporary-file-and-rename helper every package uses.

    atomic_write_files({dir / "model.safetensors": write_weights, dir / "config.json": write_cfg})
    atomic_write_text(dir / "vocab.txt", "[PAD]\\n[UNK]\\n...")

Each file is written by its callback to a temporary name beside its target (same directory, so
the rename cannot cross file systems), flushed to disk, made readable by other users (a
checkpoint is often served by another account than the one that wrote it), and only once every
file is complete are they renamed into place; the directory entry is then flushed too. An error
or a crash before the renames leaves every previous file untouched and no temporary behind.

Why a package of its own: `tokenization/` may use only the standard library and `model/` only
torch, so neither may host a helper the other imports; this one depends on nothing, so
`tokenization/`, `model/`, `training/` and `app/` can all share it without bending those rules.

Deliberately not here: directories written as a whole (training's checkpoint directories are
built in a temporary directory and renamed; that is the trainer's job), domain errors (callers
turn the OSError into their own), and locking (concurrent writers of one file: last one wins).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["atomic_write_files", "atomic_write_text", "fsync_path"]

# Files we publish are read by servers and tools running as other users.
FILE_MODE = 0o644


def atomic_write_files(writers: Mapping[Path, Callable[[Path], object]]) -> None:
    """Write every file with its callback (given the temporary path), then rename all into place.

    Raises OSError (from a callback, a flush or a rename); temporaries are removed in any case.
    """
    targets = {Path(p): write for p, write in writers.items()}
    temps = {p: p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex[:12]}") for p in targets}
    try:
        for path, write in targets.items():
            write(temps[path])
            os.chmod(temps[path], FILE_MODE)
            fsync_path(temps[path])
        for path, tmp in temps.items():
            os.replace(tmp, path)
        for parent in {p.parent for p in targets}:
            fsync_path(parent)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically; creates the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_files({path: lambda p: p.write_text(text, encoding="utf-8", newline="\n")})


def fsync_path(path: Path) -> None:
    """Flush a file (or a directory entry, where the OS allows it) to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # directories cannot be opened on some platforms
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
