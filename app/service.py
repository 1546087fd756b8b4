"""ServeState: the running server's parts (config, metrics, registry, batcher, threads) and the
operations the routes call.

One ``ServeState`` per app, created by ``create_app`` and started/stopped by its lifespan; routes
reach it through the ``get_state`` dependency (``app.routes.deps``) (never a module-level singleton). Operations:
check the request against the configured limits, tokenize (short texts inline on the event loop,
long ones in the tokenizer thread), submit to the batcher bound to the engine that tokenized,
and await the result while watching for the client going away, marking the request's stages.
The model runs only in the single model thread. After the first load, every object alive is
frozen out of the garbage collector's sight (``gc.freeze``): full collections were the p99.

Deliberately not here: HTTP details and FastAPI dependencies (``app.routes``), batching policy
(``app.batcher``), tensors (``app.engine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from app.batcher import BatchQueue, Pending
from app.config import ConfigFileError, ServeConfig
from app.engine import Engine
from app.errors import InputValidationError, UnhealthyError, UnsupportedError
from app.jobs import (
    SCORE_FUNCTIONS,
    ClassifyJob,
    EmbedJob,
    Encoded,
    FillMaskJob,
    Job,
    SparseJob,
    TokenEmbedJob,
    score_function,
)
from app.metrics import ServeMetrics, current_timer, watch_event_loop
from app.registry import ModelRegistry

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Texts this short (a few sentences) are tokenized on the event loop itself: ~50 us of work,
# less than the thread hop it would take (a future, a wake-up, two GIL hand-overs), and no
# waiting behind the model thread for the GIL. Longer ones go to the tokenizer thread so that
# the loop keeps answering other requests meanwhile.
INLINE_TOKENIZE_CHARS = 2048
# Makes an awaitable that completes when the client goes away (called only once queued).
Disconnect = Callable[[], Awaitable[Any]]


def configure_torch_threads(n: int) -> None:
    """Give torch ``n`` intra-op threads and one inter-op thread (process-wide settings)."""
    torch.set_num_threads(n)
    # Inter-op parallelism only helps graphs with independent branches; BERT has none. It can
    # only be set before the first parallel work, hence the suppress on a second app.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


class ServeState:
    """Everything one app instance runs; ``start``/``stop`` are called by the lifespan."""

    def __init__(
        self,
        config: ServeConfig,
        metrics: ServeMetrics | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or ServeMetrics()
        self.registry = registry or ModelRegistry(config, self.metrics)
        self.admin_token = config.read_admin_token()
        self.api_keys = config.read_api_keys()  # None: the inference API is open
        if self.admin_token is not None and self.api_keys and self.api_keys.check(self.admin_token):
            raise ConfigFileError("the admin token must differ from every API key")
        self.batcher: BatchQueue | None = None
        self.draining = False  # set on SIGTERM: readiness goes 503 while requests finish
        self.started_at = time.time()
        self._model_thread: ThreadPoolExecutor | None = None
        self._tokenizer_threads: ThreadPoolExecutor | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        # A lifespan may run again on the same app (test clients, ASGI hosts that restart it):
        # the previous stop()'s draining flag must not outlive it.
        self.draining = False
        configure_torch_threads(self.config.effective_torch_threads())
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="bert-model")
        self._tokenizer_threads = ThreadPoolExecutor(
            self.config.tokenizer_threads, thread_name_prefix="bert-tokenize"
        )
        await self.registry.load_initial()
        # Everything alive now (torch, FastAPI, the model) lives as long as the process. A full
        # collection traverses all of it: ~300 ms with the event loop stopped, every few seconds
        # under load, which was most of the p99. Frozen objects are never traversed again.
        gc.collect()
        gc.freeze()
        b = self.config.batching_settings()
        self.batcher = BatchQueue(
            self._run_batch,
            max_batch_size=b["max_batch_size"],
            max_batch_tokens=b["max_batch_tokens"],
            max_wait_s=b["max_wait_ms"] / 1000.0,
            max_queue=b["max_queue"],
            compute_timeout_s=b["compute_timeout_s"],
            metrics=self.metrics,
            # Requests are grouped by the engine that tokenized them: its price list decides.
            cost_of=lambda engine: engine.cost_model,
            arriving=lambda: self.metrics.arrivals.count,
        )
        self.batcher.start()
        if self.config.watch:
            self._watch_task = asyncio.create_task(self.registry.watch(), name="bert-watch")
        self._lag_task = asyncio.create_task(watch_event_loop(self.metrics), name="bert-loop-lag")
        logger.info("serving %s", self.registry.version)

    async def stop(self) -> None:
        self.draining = True
        for task in (self._watch_task, self._lag_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watch_task = self._lag_task = None
        if self.batcher is not None:
            await self.batcher.stop(drain_timeout_s=float(self.config.graceful_shutdown_s))
        for pool in (self._model_thread, self._tokenizer_threads):
            if pool is not None:
                # Waiting for a batch still computing must not block the event loop.
                await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        self._model_thread = self._tokenizer_threads = None

    # --- state ---------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        """(ready, reason): a model is loaded, the batch worker is alive and not stalled on a
        hung forward pass, and the server is not shutting down."""
        if self.draining:
            return False, "the server is shutting down"
        if self.registry.current is None:
            return False, "no model is loaded"
        if self.batcher is None or not self.batcher.is_alive:
            return False, "the batch worker is not running"
        stalled_for = self.batcher.stalled_for
        if stalled_for is not None:
            return (
                False,
                f"the model is stalled: one batch has been computing for {stalled_for:.0f}s",
            )
        return True, "ok"

    def engine(self) -> Engine:
        """The serving engine; UnhealthyError (503) while none is ready."""
        ok, reason = self.ready()
        if not ok:
            raise UnhealthyError(reason)
        assert self.registry.current is not None
        return self.registry.current

    # --- threads -------------------------------------------------------------------------------
    async def tokenize_with(
        self, fn: Callable[..., T], *args: Any, chars: int | None = None, **kwargs: Any
    ) -> T:
        """``fn(*args, **kwargs)`` in the tokenizer thread, or inline on the event loop when the
        request's texts are short (``chars`` <= INLINE_TOKENIZE_CHARS)."""
        if self._tokenizer_threads is None:
            raise UnhealthyError("the server is not running")
        timer = current_timer()
        if timer is not None:
            timer.mark("parse")
        if chars is not None and chars <= INLINE_TOKENIZE_CHARS:
            result = fn(*args, **kwargs)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                self._tokenizer_threads, functools.partial(fn, *args, **kwargs)
            )
        if timer is not None:
            timer.mark("tokenize")
        return result

    async def _run_batch(self, batch: list[Pending]) -> list[Any]:
        # Every request of a batch was tokenized by the same engine (the batcher's group).
        engine: Engine = batch[0].group
        if self._model_thread is None:
            raise UnhealthyError("the server is not running")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._model_thread, engine.run_batch, [p.payload for p in batch]
        )

    async def _compute(self, engine: Engine, job: Job, disconnected: Disconnect | None) -> Any:
        if self.batcher is None:
            raise UnhealthyError("the batch worker is not running")
        timer = current_timer()
        if timer is not None:
            timer.arrived()
        pending = self.batcher.submit(
            [len(e) for e in job.inputs],
            job,
            group=engine,
            timeout_s=self.config.request_timeout_s,
        )
        result = await self.batcher.wait(pending, disconnected() if disconnected else None)
        if timer is not None and pending.started_at is not None and pending.finished_at:
            timer.mark("queue", pending.started_at)
            timer.mark("compute", pending.finished_at)
        return result

    # --- limits --------------------------------------------------------------------------------
    def check_inputs(
        self,
        texts: list[str],
        n: int | None = None,
        names: list[str] | None = None,
        field: str = "inputs",
    ) -> None:
        """422 unless there are 1..max_client_batch inputs (``n``, default one per text) and
        every text is non-blank, valid Unicode. An error names the text as the request does:
        ``names[i]`` (``inputs[2][1]`` for the second text of the third pair, ``query``), by
        default ``inputs[i]``; ``field`` names the list in the count errors."""
        n = len(texts) if n is None else n
        if n == 0:
            raise InputValidationError(f"{field} is empty")
        if n > self.config.max_client_batch:
            raise InputValidationError(
                f"{n} {field} in one request; the limit is {self.config.max_client_batch}"
            )
        for i, t in enumerate(texts):
            name = names[i] if names is not None else f"inputs[{i}]"
            if not t or t.isspace():
                raise InputValidationError(f"{name} is empty")
            check_unicode(t, name)

    # --- operations ----------------------------------------------------------------------------
    async def fill_mask(
        self,
        texts: list[str],
        *,
        top_k: int,
        targets: list[str] | None,
        truncate: bool,
        disconnected: Disconnect | None = None,
    ) -> tuple[Engine, list[list[list[dict[str, Any]]]]]:
        """Candidates per input, per [MASK]: dicts with score, token, token_str, sequence."""
        self.check_inputs(texts)
        if top_k > self.config.max_top_k:
            raise InputValidationError(f"top_k is {top_k}; the limit is {self.config.max_top_k}")
        if targets is not None:
            if not targets:
                raise InputValidationError("targets is empty; leave it out to rank the vocabulary")
            if len(targets) > self.config.max_targets:
                raise InputValidationError(
                    f"{len(targets)} targets; the limit is {self.config.max_targets}"
                )
            for i, t in enumerate(targets):
                check_unicode(t, f"targets[{i}]")
        engine = self.engine()
        if not engine.can_fill_mask:
            raise UnsupportedError(
                f"the model {engine.version} ({engine.capabilities.kind}) has no "
                f"masked-language-model head, so it cannot fill masks; it serves {_serves(engine)}"
            )

        def prepare() -> FillMaskJob:
            target_ids = engine.target_ids(targets) if targets is not None else None
            encoded = engine.encode_fill_mask(texts, truncate=truncate)
            return FillMaskJob(inputs=encoded, top_k=top_k, target_ids=target_ids)

        job = await self.tokenize_with(prepare, chars=_chars(texts, targets))
        raw = await self._compute(engine, job, disconnected)
        itos = engine.tokenizer.id_to_token
        predictions = []
        for text, enc, per_mask in zip(texts, job.inputs, raw, strict=True):
            input_preds = []
            for pos, candidates in zip(enc.mask_positions, per_mask, strict=True):
                start, end = enc.offsets[pos]
                input_preds.append(
                    [
                        {
                            "score": score,
                            "token": tid,
                            "token_str": itos(tid),
                            "sequence": fill_text(text, start, end, itos(tid)),
                        }
                        for tid, score in candidates
                    ]
                )
            predictions.append(input_preds)
        return engine, predictions

    def prompt(self, engine: Engine, prompt_name: str | None) -> str:
        """The text put before each input: the named prompt, else the server's
        ``default_prompt_name``, else the model's default prompt ("" where there is none)."""
        caps = engine.capabilities
        name = prompt_name or self.config.default_prompt_name or caps.default_prompt_name
        if name is None:
            return ""
        if name not in caps.prompts:
            which = "prompt_name" if prompt_name else "the server's default_prompt_name"
            known = ", ".join(sorted(caps.prompts)) or "none"
            raise InputValidationError(
                f"{which} {name!r} is not a prompt of the model {engine.version} "
                f"(its prompts: {known})"
            )
        return caps.prompts[name]

    async def embed(
        self,
        texts: list[str],
        *,
        pooling: str | None,
        normalize: bool | None,
        truncate: bool,
        direction: str = "right",
        dimensions: int | None = None,
        prompt_name: str | None = None,
        disconnected: Disconnect | None = None,
    ) -> tuple[Engine, list[list[float]], int]:
        """(engine, one vector per input, tokens used).

        ``pooling=None`` and ``normalize=None`` mean the defaults of the engine that computes the
        vectors (its capabilities: the checkpoint's pooling, and unit vectors unless it is a
        sentence-transformers directory without a Normalize module): after a hot swap, the new
        checkpoint's. ``dimensions`` keeps the first that many values of each vector, then
        normalizes (Matryoshka); more than the model has is 400 Unsupported. The prompt
        (``prompt``) is put before every text, as sentence-transformers' ``encode`` does.
        """
        self.check_inputs(texts)
        engine = self.engine()
        pooling = pooling or engine.capabilities.pooling
        if normalize is None:
            normalize = engine.capabilities.normalize
        size = engine.config.hidden_size
        if dimensions is not None and dimensions > size:
            raise UnsupportedError(
                f"dimensions is {dimensions}, but the model {engine.version} gives vectors of "
                f"{size} values"
            )
        encoded = await self._encode_texts(engine, texts, truncate, direction, prompt_name)
        job = EmbedJob(inputs=encoded, pooling=pooling, normalize=normalize, dimensions=dimensions)
        vectors = await self._compute(engine, job, disconnected)
        return engine, vectors, sum(len(e) for e in encoded)

    async def _encode_texts(
        self,
        engine: Engine,
        texts: list[str],
        truncate: bool,
        direction: str,
        prompt_name: str | None = None,
    ) -> list[Encoded]:
        """The texts, prompt first (embedding-like operations), tokenized."""
        prompt = self.prompt(engine, prompt_name)
        if prompt:
            texts = [prompt + t for t in texts]
        return await self.tokenize_with(
            engine.encode_many, texts, truncate=truncate, direction=direction, chars=_chars(texts)
        )

    async def token_embeddings(
        self,
        texts: list[str],
        *,
        truncate: bool,
        direction: str = "right",
        prompt_name: str | None = None,
        disconnected: Disconnect | None = None,
    ) -> tuple[Engine, list[list[list[float]]]]:
        """(engine, per input every token's final vector, [CLS] and [SEP] included)."""
        self.check_inputs(texts)
        engine = self.engine()
        encoded = await self._encode_texts(engine, texts, truncate, direction, prompt_name)
        return engine, await self._compute(engine, TokenEmbedJob(inputs=encoded), disconnected)

    async def sparse(
        self,
        texts: list[str],
        *,
        truncate: bool,
        direction: str = "right",
        prompt_name: str | None = None,
        disconnected: Disconnect | None = None,
    ) -> tuple[Engine, list[list[tuple[int, float]]]]:
        """(engine, per input its SPLADE vector's non-zero (vocabulary id, weight) pairs).

        Any model with an MLM head (else 400 Unsupported): max over the text's tokens of
        log(1 + relu(logits)), [CLS]/[SEP] excluded; a sentence-transformers SparseEncoder
        directory keeps its own settings (pooling, activation, max_active_dims, specials counted)
        so that the vectors equal its ``encode``.
        """
        self.check_inputs(texts)
        engine = self.engine()
        caps = engine.capabilities
        if not caps.sparse:
            raise UnsupportedError(
                f"the model {engine.version} ({caps.kind}) has no masked-language-model head, "
                f"so it has no sparse (SPLADE) vectors; it serves {_serves(engine)}"
            )
        encoded = await self._encode_texts(engine, texts, truncate, direction, prompt_name)
        job = SparseJob(
            inputs=encoded,
            pooling=caps.splade_pooling,
            activation=caps.splade_activation,
            max_active_dims=caps.splade_max_active_dims,
            skip_special=not caps.sparse_encoder,
        )
        return engine, await self._compute(engine, job, disconnected)

    async def classify(
        self,
        inputs: list[str] | list[tuple[str, str]],
        *,
        function: str | None = "softmax",
        top_k: int | None = None,
        truncate: bool = False,
        direction: str = "right",
        disconnected: Disconnect | None = None,
    ) -> tuple[Engine, list[list[tuple[str, float]]]]:
        """(engine, per input its (label, score) pairs best first: the top_k, or all of them).

        ``inputs`` are texts, or sentence pairs (token type 1 for the second text; cut
        ``longest_first`` with ``truncate``). ``function`` turns logits into scores as the
        text-classification pipeline's ``function_to_apply`` does: "softmax" (probabilities),
        "sigmoid" or "none" (the logits); None: for a one-label model its score as
        ``CrossEncoder.predict`` gives it (the directory's activation, sigmoid by default; a
        softmax over one label is always 1), else softmax.
        """
        engine, encoded = await self._classify_inputs(inputs, truncate, direction, "longest_first")
        caps = engine.capabilities
        if function is None:
            one_label = score_function(caps.score_activation or "sigmoid")
            function = one_label if len(caps.labels) == 1 else "softmax"
        if function not in SCORE_FUNCTIONS:
            raise InputValidationError(
                f"function_to_apply must be one of {', '.join(SCORE_FUNCTIONS)}, got {function!r}"
            )
        scores = await self._compute(
            engine, ClassifyJob(inputs=encoded, function=function), disconnected
        )
        labels = engine.capabilities.labels
        # Best first, ties in label order (a stable sort), as the pipeline ranks them.
        ranked = [
            sorted(zip(labels, row, strict=True), key=lambda p: p[1], reverse=True)[:top_k]
            for row in scores
        ]
        return engine, ranked

    async def _classify_inputs(
        self,
        inputs: list[str] | list[tuple[str, str]],
        truncate: bool,
        direction: str,
        strategy: str,
        max_second: int | None = None,
        names: list[str] | None = None,
        field: str = "inputs",
    ) -> tuple[Engine, list[Encoded]]:
        """The serving engine (400 without a classifier) and the inputs tokenized, pairs too.
        ``names``: what the request calls each text, in order (default ``inputs[i]``, and
        ``inputs[i][j]`` inside a pair)."""
        pairs = [p for p in inputs if isinstance(p, tuple)]
        texts = [t for p in inputs for t in (p if isinstance(p, tuple) else (p,))]
        if names is None:
            names = [
                name
                for i, p in enumerate(inputs)
                for name in (
                    [f"inputs[{i}][{j}]" for j in range(len(p))]
                    if isinstance(p, tuple)
                    else [f"inputs[{i}]"]
                )
            ]
        self.check_inputs(texts, n=len(inputs), names=names, field=field)
        engine = self.engine()
        if not engine.can_classify:
            raise UnsupportedError(
                f"the model {engine.version} ({engine.capabilities.kind}) has no classification "
                f"head, so it cannot classify text; it serves {_serves(engine)}"
            )
        if pairs and len(pairs) != len(inputs):
            raise InputValidationError("inputs mixes texts and sentence pairs; send one kind")
        if pairs:
            return engine, await self.tokenize_with(
                engine.encode_pairs,
                pairs,
                truncate=truncate,
                strategy=strategy,
                max_second=max_second,
                chars=_chars(texts),
            )
        return engine, await self.tokenize_with(
            engine.encode_many, texts, truncate=truncate, direction=direction, chars=_chars(texts)
        )

    async def rerank(
        self,
        query: str,
        documents: list[str],
        *,
        raw_scores: bool = False,
        truncate: bool = True,
        max_document_tokens: int | None = None,
        field: str = "texts",
        disconnected: Disconnect | None = None,
    ) -> tuple[Engine, list[tuple[int, float]]]:
        """(engine, (document index, relevance score) best first) from a cross-encoder.

        The model must be a one-label classifier (a reranker; else 400). Scores are what
        sentence-transformers' ``CrossEncoder.predict`` gives (the directory's activation,
        sigmoid by default), or the logits with ``raw_scores``. A pair over the token limit is
        cut on the document's side, or refused without ``truncate``; ``max_document_tokens``
        cuts every document to that many tokens first. ``field`` is what the request calls
        the documents (TEI ``texts``, Cohere ``documents``), for error messages.
        """
        if not documents:
            raise InputValidationError(f"{field} is empty")
        engine = self.engine()
        caps = engine.capabilities
        if not caps.rerank:
            raise UnsupportedError(
                f"the model {engine.version} ({caps.kind}) is not a reranker (a cross-encoder: a "
                f"classifier with one label); it serves {_serves(engine)}"
            )
        engine, encoded = await self._classify_inputs(
            [(query, d) for d in documents],
            truncate,
            "right",
            "only_second",
            max_document_tokens,
            names=[name for i in range(len(documents)) for name in ("query", f"{field}[{i}]")],
            field=field,
        )
        function = "none" if raw_scores else score_function(caps.score_activation or "sigmoid")
        scores = await self._compute(
            engine, ClassifyJob(inputs=encoded, function=function), disconnected
        )
        ranked = sorted(enumerate(row[0] for row in scores), key=lambda p: p[1], reverse=True)
        return engine, ranked

    async def similarity(
        self,
        source: str,
        sentences: list[str],
        *,
        truncate: bool = False,
        direction: str = "right",
        prompt_name: str | None = None,
        disconnected: Disconnect | None = None,
    ) -> tuple[Engine, list[float]]:
        """Cosine similarity of ``source`` with each sentence, from the model's embeddings (its
        pooling), as the sentence-similarity pipeline computes it."""
        if len(sentences) + 1 > self.config.max_client_batch:
            raise InputValidationError(
                f"{len(sentences)} sentences and the source in one request; the limit is "
                f"{self.config.max_client_batch} texts"
            )
        engine, vectors, _ = await self.embed(
            [source, *sentences],
            pooling=None,
            normalize=True,
            truncate=truncate,
            direction=direction,
            prompt_name=prompt_name,
            disconnected=disconnected,
        )
        first = vectors[0]
        return engine, [sum(a * b for a, b in zip(first, v, strict=True)) for v in vectors[1:]]

    def decode(
        self, sequences: list[list[int]], *, skip_special_tokens: bool
    ) -> tuple[Engine, list[str]]:
        """(engine, the text of each id sequence): ``/decode``, no model pass."""
        n = len(sequences)
        if not 1 <= n <= self.config.max_client_batch:
            raise InputValidationError(
                f"{n} id sequences in one request; the limit is 1 to {self.config.max_client_batch}"
            )
        limit = self.config.max_input_tokens * 4  # ids are cheap; a bound all the same
        for i, ids in enumerate(sequences):
            if len(ids) > limit:
                raise InputValidationError(f"ids[{i}] has {len(ids)} ids; the limit is {limit}")
        engine = self.engine()
        return engine, [
            engine.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences
        ]

    async def tokenize(
        self, texts: list[str], *, add_special_tokens: bool
    ) -> tuple[Engine, list[list[dict[str, Any]]]]:
        self.check_inputs(texts)
        engine = self.engine()

        def run() -> list[list[dict[str, Any]]]:
            return [engine.tokens(t, add_special_tokens) for t in texts]

        return engine, await self.tokenize_with(run)


def _chars(*groups: list[str] | None) -> int:
    """Characters in all the texts of a request (what tokenizing it costs)."""
    return sum(len(t) for texts in groups if texts for t in texts)


def _serves(engine: Engine) -> str:
    """What the model serves, for the sentence of an Unsupported error: e.g. "fill-mask, sparse
    vectors and embeddings", "reranking and embeddings" or "embeddings"."""
    caps = engine.capabilities
    heads = [
        ("fill-mask", caps.fill_mask),
        ("sparse vectors", caps.sparse),
        ("reranking", caps.rerank),
        ("text classification", engine.can_classify and not caps.rerank),
    ]
    tasks = [*(task for task, has in heads if has), "embeddings"]
    return tasks[0] if len(tasks) == 1 else ", ".join(tasks[:-1]) + " and " + tasks[-1]


def check_unicode(text: str, where: str) -> None:
    """422 for text that is not valid Unicode: JSON's ``"\\ud800"`` escape gives a lone
    surrogate, which no tokenizer or UTF-8 response can represent."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputValidationError(f"{where} is not valid Unicode (lone surrogate)") from None


def fill_text(text: str, start: int, end: int, token: str) -> str:
    """``text`` with the span [start, end) (a [MASK]) replaced by ``token``.

    A continuation piece (``##ing``) is glued to the word before the mask:
    ``fill_text("walk [MASK] home", 5, 11, "##ing")`` -> ``"walking home"``.
    """
    if token.startswith("##") and len(token) > 2:
        return text[:start].rstrip() + token[2:] + text[end:]
    return text[:start] + token + text[end:]
