"""``bert-serve``: run the model server with uvicorn.

    bert-serve --checkpoint checkpoints/default [--host 127.0.0.1 --port 8000]
               [--config serve.yaml] [--models-root DIR --watch] [--admin-token-file FILE]
               [--max-batch-size 32 --max-wait-ms 5 --no-batching ...]

Every ``ServeConfig`` field is a flag (``--max-batch-size``; booleans as ``--watch/--no-watch``);
flags override ``BERT_SERVE_*`` environment variables, which override the YAML file. Invalid
settings exit with status 2 and the reason.

SIGTERM (or a first Ctrl-C) drains: readiness (``/health``) and every new request answer 503 at
once, while the listener stays open, so a load balancer sees "not ready" rather than "connection
refused"; once no request is in flight (probes aside), or ``graceful_shutdown_s`` after the
signal, uvicorn closes the listener, waits what is left of that period for responses still being
written, and the process exits 0. A second Ctrl-C stops at once.

A checkpoint that does not load at startup is a user error: the process logs its one-sentence
reason (not a traceback) and exits with uvicorn's startup-failure status, 3.

Deliberately not here: multiple worker processes (run replicas instead; they can share a models
volume and follow the same ``current`` pointer with ``--watch``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import ConfigFileError, ServeConfig
from app.errors import CheckpointLoadError


def build_parser() -> argparse.ArgumentParser:
    """One flag per ServeConfig field, plus --config; unset flags do not override anything."""
    parser = argparse.ArgumentParser(
        prog="bert-serve", description="Serve a BERT checkpoint over HTTP (fill-mask, embeddings)."
    )
    parser.add_argument("--config", type=Path, help="YAML file of ServeConfig settings.")
    for name, field in ServeConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        if field.default is not None and not isinstance(field.default, bool):
            help_text += f" (default: {field.default})"
        if field.annotation is bool:
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text + f" (default: {field.default})",
            )
        else:
            parser.add_argument(
                flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text
            )
    return parser


def load_config(argv: list[str] | None = None) -> ServeConfig:
    """Parse flags and build the ServeConfig (exits 2 with the reason when invalid)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    try:
        return ServeConfig.load(config_file, **args)
    except (ValidationError, ConfigFileError) as e:
        parser.exit(2, f"bert-serve: invalid configuration:\n{e}\n")


class StartupReason:
    """ASGI wrapper: when the startup checkpoint does not load, uvicorn logs the reason (one
    sentence) instead of the traceback Starlette puts into ``lifespan.startup.failed``. Any
    other startup failure keeps its traceback: that one is a bug."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent once we know what failed
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except CheckpointLoadError as e:
            if held:
                held[:] = [{"type": "lifespan.startup.failed", "message": f"bert-serve: {e}"}]
            raise
        finally:
            for message in held:  # any other failure: the original message, traceback and all
                await send(message)


def main(argv: list[str] | None = None) -> int:
    config = load_config(argv)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn  # heavy imports only once the config is known to be valid

    from app.main import create_app

    try:
        app = create_app(config)
    except ConfigFileError as e:  # e.g. an unreadable admin token file
        print(f"bert-serve: {e}", file=sys.stderr)
        return 2
    state = app.state.serve
    in_flight = app.state.in_flight

    class Server(uvicorn.Server):
        drain_deadline: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            state.draining = True  # readiness goes 503 before connections close
            if self.drain_deadline is None:
                self.drain_deadline = time.monotonic() + config.graceful_shutdown_s
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                # uvicorn re-raises captured signals after shutting down, so a drained, clean stop
                # would end with status 143; SIGTERM is the normal way to stop a server, so exit 0.
                self._captured_signals = [s for s in self._captured_signals if s != sig]

        async def on_tick(self, counter: int) -> bool:
            # uvicorn would close the listener at the next tick; hold it open while requests are
            # in flight, so that probes and late clients get a 503 instead of a refused connection.
            should_exit = await super().on_tick(counter)
            draining = should_exit and not self.force_exit and self.drain_deadline is not None
            if draining and in_flight.count > 0 and time.monotonic() < self.drain_deadline:
                return False
            return should_exit

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # One grace period in all: uvicorn's wait for open responses gets what the drain left.
            if self.drain_deadline is not None:
                if in_flight.count > 0 and state.batcher is not None and not self.force_exit:
                    # Out of time: the batcher answers what it still holds with 503, where
                    # uvicorn would cancel the handlers and answer 500.
                    await state.batcher.stop()
                left = self.drain_deadline - time.monotonic()
                self.config.timeout_graceful_shutdown = max(0.5, left)
            await super().shutdown(sockets)

    server = Server(
        uvicorn.Config(
            StartupReason(app),
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            timeout_graceful_shutdown=config.graceful_shutdown_s,
            lifespan="on",
        )
    )
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
