"""JSON Lines files, read in one place: corpus files, labelled files and a run's metrics.jsonl.

`read_jsonl(path)` yields `(line number, value)` for every line that holds something, numbering
from 1 and streaming the file (a corpus may be larger than one wants in a string):

    {"text": "a dog"}          -> (1, {"text": "a dog"})
                               -> (nothing: blank lines are skipped, their numbers are not)
    {"text": "a cat"}          -> (3, {"text": "a cat"})

A line that is not JSON is an error naming the file and the line (`c.jsonl:2: invalid JSON
(Expecting value)`), raised as the caller's own error class (`error=`); with `skip_invalid` it is
passed over instead, which is what a reader of a log that a crash may have torn mid-line wants.

Deliberately not here: what the values must look like (each caller checks its own fields) and
writing (run.metrics.MetricsLogger appends its own lines).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["read_jsonl"]


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    error: type[Exception] = ValueError,
    skip_invalid: bool = False,
) -> Iterator[tuple[int, Any]]:
    """`(line number, decoded value)` of each non-blank line of `path` (UTF-8).

    A line that is not JSON raises `error("<path>:<line>: invalid JSON (<why>)")`, or is skipped
    with `skip_invalid`. OSError and UnicodeDecodeError pass through for the caller to word.
    """
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                if skip_invalid:
                    continue
                raise error(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            yield lineno, value
