"""``bert-serve``: run the model server with uvicorn.

    bert-serve --checkpoint checkpoints/default [--host 127.0.0.1 --port 8000]
               [--config serve.yaml] [--models-root DIR --watch] [--admin-token-file FILE]
               [--max-batch-size 32 --max-wait-ms 5 --no-batching ...]

Every ``ServeConfig`` field is a flag (``--max-batch-size``; booleans as ``--watch/--no-watch``);
flags override ``BERT_SERVE_*`` environment variables, which override the YAML file. Invalid
settings exit with status 2 and the reason. On SIGTERM readiness (``/health``) turns 503 at once,
uvicorn stops accepting connections and in-flight requests get ``graceful_shutdown_s`` to finish.

Deliberately not here: multiple worker processes (run replicas instead; they can share a models
volume and follow the same ``current`` pointer with ``--watch``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from app.config import ConfigFileError, ServeConfig


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

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            state.draining = True  # readiness goes 503 before connections close
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                # uvicorn re-raises captured signals after shutting down, so a drained, clean stop
                # would end with status 143; SIGTERM is the normal way to stop a server, so exit 0.
                self._captured_signals = [s for s in self._captured_signals if s != sig]

    server = Server(
        uvicorn.Config(
            app,
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
