"""Hot-swap: which checkpoint is serving, loading a new one beside it, and following a pointer.

``ModelRegistry.current`` is the serving ``Engine``. A reload resolves a checkpoint *name* inside
the configured models root, loads and validates it in a worker thread while the old engine keeps
serving, then swaps with one reference assignment. Requests are bound to the engine that
tokenized them (the batcher's ``group``), so queued and in-flight requests finish on the model
they started with and a batch never mixes versions. A failed load leaves the old engine serving
and raises ``CheckpointLoadError`` with the reason.

Names resolve only inside the models root: a plain directory name (no separators, no leading
dot, so no ``..`` and no absolute paths), and the resolved directory (and every file read from
it, see ``load_engine``) must stay inside the resolved root, so symlinks cannot lead out of it.

Watch mode polls ``<models_root>/current`` (a file holding a checkpoint name); every replica that
shares the volume converges on the checkpoint it names. A name that failed to load is not retried
until the pointer changes (or its modification time does).

Deliberately not here: authentication (``app.routes.admin``), HTTP status codes (``app.errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from app.config import ServeConfig
from app.engine import Engine
from app.errors import CheckpointLoadError, InputValidationError, NotFoundError
from app.loading import load_engine
from app.metrics import ServeMetrics

logger = logging.getLogger(__name__)

POINTER_NAME = "current"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Loader = Callable[..., Engine]


class ModelRegistry:
    """The serving engine, and the only place that replaces it."""

    def __init__(
        self, config: ServeConfig, metrics: ServeMetrics, loader: Loader = load_engine
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._loader = loader
        self.current: Engine | None = None
        self._lock = asyncio.Lock()  # one load at a time
        self._last_pointer: tuple[str, float] | None = None  # (name, mtime) last acted on

    # --- names and paths ----------------------------------------------------------------------
    def root(self) -> Path:
        if self.config.models_root is None:
            raise NotFoundError("no models root is configured; reload by name is unavailable")
        try:
            return self.config.models_root.resolve(strict=True)
        except OSError as e:
            raise NotFoundError(f"the models root does not exist: {e.strerror}") from None

    def resolve(self, name: str) -> Path:
        """The checkpoint directory called ``name`` inside the models root."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InputValidationError(
                "a checkpoint name is a plain directory name (letters, digits, '.', '_', '-'; "
                "no path separators, no leading dot)"
            )
        root = self.root()
        candidate = root / name
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotFoundError(f"no checkpoint named {name!r} in the models root") from None
        if not resolved.is_relative_to(root) or resolved == root:
            raise InputValidationError(f"checkpoint {name!r} resolves outside the models root")
        if not resolved.is_dir():
            raise NotFoundError(f"checkpoint {name!r} is not a directory")
        return resolved

    def read_pointer(self) -> tuple[str, float] | None:
        """(name, mtime) from ``<root>/current``, or None if there is no pointer file."""
        root = self.root()
        pointer = root / POINTER_NAME
        try:
            if not pointer.resolve(strict=True).is_relative_to(root):
                raise InputValidationError("the `current` pointer resolves outside the models root")
            mtime = pointer.stat().st_mtime
            text = pointer.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        return text.strip(), mtime

    # --- loading ------------------------------------------------------------------------------
    async def load_initial(self) -> Engine:
        """Load the startup checkpoint: ``config.checkpoint``, else the pointer's (watch mode)."""
        if self.config.checkpoint is not None:
            engine = await asyncio.to_thread(
                self._loader,
                self.config.checkpoint,
                max_input_tokens=self.config.max_input_tokens,
                precision=self.config.precision,
            )
        else:
            pointer = await asyncio.to_thread(self.read_pointer)
            if pointer is None or not pointer[0]:
                raise CheckpointLoadError(
                    f"no --checkpoint given and {self.config.models_root}/{POINTER_NAME} is "
                    "missing or empty"
                )
            self._last_pointer = pointer
            path = self.resolve(pointer[0])
            engine = await asyncio.to_thread(
                self._loader,
                path,
                max_input_tokens=self.config.max_input_tokens,
                root=self.root(),
                precision=self.config.precision,
            )
        self._install(engine)
        return engine

    async def reload(self, name: str) -> tuple[Engine, Engine | None]:
        """Load checkpoint ``name`` beside the current one and swap; (new, previous)."""
        async with self._lock:
            try:
                path = self.resolve(name)
                engine = await asyncio.to_thread(
                    self._loader,
                    path,
                    max_input_tokens=self.config.max_input_tokens,
                    root=self.root(),
                    precision=self.config.precision,
                )
            except Exception as e:
                self.metrics.reloads.labels(result="failure").inc()
                # The text, not the exception: a log record keeps its arguments, and the
                # exception's traceback holds the failed load's frames (file bytes, tensors), so a
                # handler that retains records would keep every failed checkpoint in memory.
                logger.warning("reload of %r failed, keeping %s: %s", name, self.version, str(e))
                if isinstance(e, (CheckpointLoadError, InputValidationError, NotFoundError)):
                    raise
                raise CheckpointLoadError(f"cannot load checkpoint {name!r}: {e}") from e
            previous = self.current
            self._install(engine)
            self.metrics.reloads.labels(result="success").inc()
            logger.info(
                "swapped model %s -> %s", previous.version if previous else None, engine.version
            )
            return engine, previous

    def _install(self, engine: Engine) -> None:
        # The swap: one reference assignment on the event loop. The batcher reads `current` only
        # when a request is tokenized, and batches by engine, so no batch mixes versions.
        self.current = engine
        caps = engine.capabilities
        self.metrics.set_model(
            engine.version, engine.sha256, caps.kind, len(caps.labels), engine.precision
        )

    @property
    def version(self) -> str | None:
        return self.current.version if self.current is not None else None

    # --- watch mode ---------------------------------------------------------------------------
    async def check_pointer(self) -> bool:
        """Reload if the pointer names another checkpoint than the one serving; True if swapped."""
        try:
            pointer = await asyncio.to_thread(self.read_pointer)
        except Exception as e:
            logger.warning("cannot read the %s pointer: %s", POINTER_NAME, str(e))
            return False
        if pointer is None or not pointer[0] or pointer == self._last_pointer:
            return False
        name = pointer[0]
        self._last_pointer = pointer
        if self.current is not None:
            with contextlib.suppress(Exception):
                if self.resolve(name) == self.current.path.resolve():
                    return False
        try:
            await self.reload(name)
        except Exception as e:  # logged and counted by reload; not retried until it changes
            logger.warning("watch: %s names %r, which did not load: %s", POINTER_NAME, name, str(e))
            return False
        return True

    async def watch(self) -> None:
        """Poll the pointer every ``watch_interval_s`` until cancelled."""
        interval = self.config.watch_interval_s
        logger.info("watching %s every %.1fs", self.root() / POINTER_NAME, interval)
        while True:
            started = time.monotonic()
            try:
                await self.check_pointer()
            except Exception:
                logger.exception("watch loop error")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
