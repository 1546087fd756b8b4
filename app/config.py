"""ServeConfig: every setting and limit of the model server, in one pydantic-settings class.

Sources, highest priority first: CLI flags (passed as init keyword arguments by ``app.cli``),
environment variables (``BERT_SERVE_<FIELD>``), a YAML file (``--config serve.yaml``), defaults.
Unknown keys are errors in the YAML file and in ``BERT_SERVE_*`` variables, so that a typo never
silently falls back to a default. Cross-field checks live in one validator.

This module does not read checkpoints, start anything or touch torch; it only describes settings
(and reads the secret files it names).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from app.auth import MIN_SECRET_CHARS, ApiKeys, KeyFileError

ENV_PREFIX = "BERT_SERVE_"

# The YAML file for the ServeConfig being built right now (set by ``ServeConfig.load``); a context
# variable rather than a class attribute so that concurrent loads (tests) cannot see each other's.
_YAML_FILE: ContextVar[Path | None] = ContextVar("bert_serve_yaml_file", default=None)


class ConfigFileError(ValueError):
    """The YAML config file is unreadable, not a mapping, or names unknown keys."""


class ServeConfig(BaseSettings):
    """All settings of ``bert-serve``; build with ``ServeConfig.load(...)`` or directly in tests."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    # --- model and checkpoints ---------------------------------------------------------------
    # The checkpoint served at startup (trusted: given by the operator). With ``watch`` it may be
    # left out, and the ``current`` pointer in ``models_root`` names it instead.
    checkpoint: Path | None = Field(default=None, description="Checkpoint directory to serve.")
    # Hot-swap looks up checkpoint names only inside this directory; unset disables name lookup.
    models_root: Path | None = Field(
        default=None, description="Directory of named checkpoints for reload and watch."
    )
    # Follow ``<models_root>/current`` (a file holding a checkpoint name) so replicas converge.
    watch: bool = Field(default=False, description="Follow <models_root>/current.")
    watch_interval_s: float = Field(default=2.0, gt=0, le=3600, description="Pointer poll period.")
    # The admin API (``/admin/*``) is off (404) unless a token is configured. Prefer the file:
    # a token in argv is visible to every local user through ``ps``.
    admin_token: SecretStr | None = Field(default=None, description="Admin bearer token.")
    admin_token_file: Path | None = Field(
        default=None, description="File holding the admin bearer token (enables /admin)."
    )
    # The inference API is open unless an API key is configured; then every route but /health,
    # /live, /metrics, the docs and the page's static files needs ``Authorization: Bearer <key>``.
    # The file holds one key a line and is re-read when it changes (rotation without a restart).
    api_key: SecretStr | None = Field(default=None, description="API key for inference routes.")
    api_key_file: Path | None = Field(
        default=None, description="File of API keys, one a line (re-read when it changes)."
    )
    # Browsers on these origins may call the API (CORS); empty means no CORS headers at all.
    # ``*`` allows any origin. A comma-separated string is accepted from the CLI and env.
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser."
    )

    # --- HTTP ----------------------------------------------------------------------------------
    # Loopback by default: exposing the server is an explicit decision.
    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port.")
    # 1 MB is 32 inputs of 30 kB text, far beyond 512 tokens each.
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Request body limit (413).")
    # How long a request may wait in the queue before it is answered 504 (compute is not cut).
    request_timeout_s: float = Field(default=30.0, gt=0, description="Queue deadline (504).")
    # A batch still computing after this long is a stalled model (a hung kernel, a deadlocked
    # thread): its requests get 504, the stall is logged and counted, and readiness is 503 until
    # the forward pass returns. Far above any sane batch time; it is a fault detector, not an SLO.
    compute_timeout_s: float = Field(
        default=60.0, gt=0, description="Batch compute time before the model counts as stalled."
    )
    # uvicorn's timeout_graceful_shutdown: in-flight requests get this long after SIGTERM.
    graceful_shutdown_s: int = Field(default=10, ge=0, description="Drain time after SIGTERM.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Logging level."
    )
    # The page at / (app.routes.ui): static files calling the public API like any client. Off
    # means /ui/* answers 404 and GET / 405 (POST / stays the inference route), for deployments
    # that expose the API alone.
    ui: bool = Field(
        default=True, description="Serve the browser page at GET / (off: /ui/* 404, GET / 405)."
    )

    # --- batching ------------------------------------------------------------------------------
    # Off means one request per forward pass and no waiting (the bench's baseline).
    batching: bool = Field(
        default=True, description="Dynamic batching (off: one request per pass)."
    )
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Inputs per batch.")
    # Work per batch in token-equivalents, by the engine's cost model (app.batcher.CostModel:
    # real tokens plus attention over padding); bounds activation memory and latency.
    max_batch_tokens: int = Field(default=16384, ge=1, description="Token cost per batch.")
    # How long the first request of a batch may wait for company. A few ms buys large batches
    # under load and costs an idle server almost nothing.
    max_wait_ms: float = Field(
        default=5.0, ge=0, le=10_000, description="Batch wait after the first."
    )
    max_queue: int = Field(default=256, ge=1, description="Waiting requests before 429.")
    max_client_batch: int = Field(default=32, ge=1, description="Inputs per request.")
    # Tokens per input including [CLS]/[SEP]; also capped by the model's position embeddings.
    max_input_tokens: int = Field(default=512, ge=3, description="Tokens per input.")
    max_top_k: int = Field(default=100, ge=1, description="Largest fill-mask top_k.")
    max_targets: int = Field(default=100, ge=1, description="Most fill-mask targets.")

    # What the model computes in (app.precision): auto is bf16 where the CPU/GPU has native bf16,
    # else fp32. bf16 and int8 serve only if they pass an accuracy gate against fp32 at load.
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        default="auto", description="Model precision (gated against fp32)."
    )

    # The prompt put before every text to embed when a request names none (a name from the model's
    # sentence-transformers prompts; unset: the model's own default_prompt_name, if any).
    default_prompt_name: str | None = Field(
        default=None,
        max_length=128,
        description="Prompt name used when an embedding request names none.",
    )

    # --- threads -------------------------------------------------------------------------------
    # torch intra-op threads; None means (cores - 1) so the event loop keeps a core to itself.
    torch_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads.")
    # Pure-Python tokenization holds the GIL: more threads buy nothing.
    tokenizer_threads: int = Field(default=1, ge=1, le=64, description="Tokenizer threads.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """CLI (init) > env > YAML > defaults; no dotenv or secrets directory."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _YAML_FILE.get()
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):  # JSON, as pydantic-settings passes list env values
                return value
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("admin_token", "admin_token_file", "api_key", "api_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # Compose passes `BERT_SERVE_ADMIN_TOKEN=` when no token is configured: that means "off".
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        if self.batching and self.max_client_batch > self.max_batch_size:
            raise ValueError(
                f"max_client_batch ({self.max_client_batch}) must not exceed max_batch_size "
                f"({self.max_batch_size}): one request must fit in one batch"
            )
        if self.max_batch_tokens < self.max_input_tokens:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must be at least max_input_tokens "
                f"({self.max_input_tokens}) so that one full-length input fits in a batch"
            )
        if self.watch and self.models_root is None:
            raise ValueError("watch=true needs models_root (the directory holding `current`)")
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError("set admin_token or admin_token_file, not both")
        for origin in self.cors_allow_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"cors_allow_origins: {origin!r} is not an origin (scheme://host[:port]) or *"
                )
        if self.checkpoint is None and not self.watch:
            raise ValueError("checkpoint is required (or watch=true with a models_root/current)")
        return self

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> ServeConfig:
        """Build from defaults < YAML ``config_file`` < ``BERT_SERVE_*`` env < ``overrides``."""
        _check_env_keys(cls)
        path = None
        if config_file is not None:
            path = Path(config_file)
            _check_yaml_keys(cls, path)
        token = _YAML_FILE.set(path)
        try:
            return cls(**overrides)
        finally:
            _YAML_FILE.reset(token)

    def read_admin_token(self) -> str | None:
        """The admin token (from the field or the file), or None when the admin API is off."""
        if self.admin_token is not None:
            value = self.admin_token.get_secret_value().strip()
        elif self.admin_token_file is not None:
            try:
                value = self.admin_token_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigFileError(
                    f"cannot read admin_token_file {self.admin_token_file}: {e.strerror}"
                ) from None
        else:
            return None
        if len(value) < MIN_SECRET_CHARS:
            # A short token is guessable; refusing it beats silently running a weak admin API.
            raise ConfigFileError(f"the admin token must be at least {MIN_SECRET_CHARS} characters")
        return value

    def read_api_keys(self) -> ApiKeys | None:
        """The accepted API keys, or None when the inference API is open (no key configured)."""
        if self.api_key is None and self.api_key_file is None:
            return None
        key = None if self.api_key is None else self.api_key.get_secret_value().strip()
        try:
            return ApiKeys(key, self.api_key_file)
        except KeyFileError as e:
            raise ConfigFileError(str(e)) from None

    def batching_settings(self) -> dict[str, Any]:
        """The effective batching limits (batching off: one request per batch, no wait)."""
        return {
            "enabled": self.batching,
            "max_batch_size": self.max_batch_size if self.batching else 1,
            "max_batch_tokens": self.max_batch_tokens,
            "max_wait_ms": self.max_wait_ms if self.batching else 0.0,
            "max_queue": self.max_queue,
            "max_client_batch": self.max_client_batch,
            "request_timeout_s": self.request_timeout_s,
            "compute_timeout_s": self.compute_timeout_s,
        }

    def effective_torch_threads(self) -> int:
        """torch intra-op threads: configured, else one core less than the machine has."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) - 1)


def _check_yaml_keys(cls: type[ServeConfig], path: Path) -> None:
    """Fail early, naming the file, on an unreadable YAML file, a non-mapping or unknown keys."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigFileError(f"cannot read config file {path}: {e}") from e
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in cls.model_fields)
    if unknown:
        raise ConfigFileError(f"unknown keys in {path}: {', '.join(unknown)}")


def _check_env_keys(cls: type[ServeConfig]) -> None:
    """Unknown ``BERT_SERVE_*`` variables are typos; pydantic-settings would ignore them."""
    known = {ENV_PREFIX + name.upper() for name in cls.model_fields}
    unknown = sorted(
        k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
    )
    if unknown:
        raise ConfigFileError(f"unknown environment variables: {', '.join(unknown)}")
