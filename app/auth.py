"""Bearer credentials: the API keys that may protect the inference API, and the one comparison
both it and the admin API use.

* ``MIN_SECRET_CHARS``: the shortest admin token or API key accepted (a short one is guessable;
  refusing it beats silently running a weak lock).
* ``digest(secret)`` and ``matches(given, digests)``: the credential a client sent is hashed and
  compared with every accepted digest by ``hmac.compare_digest``, always all of them, so neither
  the length nor the position of a matching key leaks through timing.
* ``ApiKeys``: the accepted keys, from the ``api_key`` setting and/or an ``api_key_file`` (one
  key a line, ``#`` comments and blank lines ignored). The file is read again when it changes
  (checked at most once a second), so keys rotate without a restart: add the new key, move the
  clients over, remove the old one. A file that becomes unreadable or empty keeps the keys last
  read (logged), so a half-written edit never locks every client out or opens the API.

Keys are never logged, nor what a client sent. Deliberately not here: HTTP (``app.routes.deps``
turns a refusal into 401), per-key quotas or scopes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

MIN_SECRET_CHARS = 16
RECHECK_S = 1.0  # how often the key file's modification time is looked at


class KeyFileError(ValueError):
    """The API key file is unreadable, empty, or holds a key that is too short."""


def digest(secret: str) -> bytes:
    """SHA-256 of a credential: fixed-length, so the comparison leaks nothing about length."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).digest()


def matches(given: str, digests: Sequence[bytes]) -> bool:
    """True if ``given`` is one of the secrets behind ``digests``, in time independent of which."""
    d = digest(given)
    found = False
    for expected in digests:
        found |= hmac.compare_digest(d, expected)
    return found


def parse_keys(text: str, source: str) -> list[str]:
    """The keys of a key file: one a line; blank lines and ``#`` comments skipped.

    Example: ``"# ci\\nk1-aaaaaaaaaaaaaaaa\\n\\n"`` -> ``["k1-aaaaaaaaaaaaaaaa"]``.
    """
    stripped = (line.strip() for line in text.splitlines())
    keys = [line for line in stripped if line and not line.startswith("#")]
    if not keys:
        raise KeyFileError(f"{source} holds no API key")
    for n, key in enumerate(keys, 1):
        if len(key) < MIN_SECRET_CHARS:
            raise KeyFileError(f"{source}: key {n} is shorter than {MIN_SECRET_CHARS} characters")
    return keys


class ApiKeys:
    """The API keys a request may carry; ``check`` is thread-safe and cheap."""

    def __init__(self, key: str | None = None, key_file: Path | None = None) -> None:
        if key is not None and len(key) < MIN_SECRET_CHARS:
            raise KeyFileError(f"the API key must be at least {MIN_SECRET_CHARS} characters")
        self._inline = [digest(key)] if key is not None else []
        self._file = key_file
        self._file_digests: list[bytes] = []
        self._mtime: float | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        if key_file is not None:
            self._load_file(strict=True)

    def _load_file(self, *, strict: bool) -> None:
        assert self._file is not None
        try:
            stat = os.stat(self._file)
            if stat.st_mtime == self._mtime:
                return
            keys = parse_keys(self._file.read_text(encoding="utf-8"), str(self._file))
        except (OSError, KeyFileError) as e:
            if strict:
                raise KeyFileError(f"cannot use api_key_file {self._file}: {e}") from None
            logger.warning("api_key_file %s: %s; keeping the keys read before", self._file, e)
            return
        self._file_digests = [digest(k) for k in keys]
        if self._mtime is not None:
            logger.info("api_key_file %s changed: %d key(s) now", self._file, len(keys))
        self._mtime = stat.st_mtime

    def check(self, given: str) -> bool:
        """True if ``given`` is an accepted key (re-reading a changed key file first)."""
        if self._file is not None:
            now = time.monotonic()
            if now - self._checked_at >= RECHECK_S:
                with self._lock:
                    if now - self._checked_at >= RECHECK_S:
                        self._load_file(strict=False)
                        self._checked_at = now
        return matches(given, [*self._inline, *self._file_digests])

    def __len__(self) -> int:
        return len(self._inline) + len(self._file_digests)
