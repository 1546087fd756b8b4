"""Engine: one loaded checkpoint (model + tokenizer + version + capabilities) and the work done
with it.

* ``Engine.self_test()``: a forward pass on a fixed input whose shapes and values must be sane
  (``app.loading.load_engine`` builds engines and calls it).
* ``Engine.capabilities``: what the model can do (fill-mask and SPLADE need an MLM head,
  classification a classifier, whose labels it lists; reranking a one-label classifier) and the
  defaults of its embeddings (pooling, normalisation, prompts, token limit), which ``/info``
  reports.
* ``Engine.encode*`` turn request texts and sentence pairs into ``Encoded`` inputs (run in the
  tokenizer thread): truncation, the token limit, ``[MASK]`` positions, fill-mask targets.
* ``Engine.run_batch(jobs)`` computes a batch of jobs of every kind (``app.jobs``) in one go
  (run in the dedicated model thread, under ``torch.inference_mode``): inputs sorted by length,
  split into forward passes by ``plan_chunks``, MLM logits only at ``[MASK]`` positions (and for
  SPLADE one input at a time), and a pass of classifications alone runs its last layer at
  ``[CLS]`` only.

Deliberately not here: loading and the choice of precision (``app.loading``,
``app.precision``), HTTP, queues, threads (``app.service`` and ``app.batcher`` own those).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app.cost import CostModel, plan_chunks
from app.errors import CheckpointLoadError, InputValidationError
from app.jobs import (
    SCORE_FUNCTIONS,
    ClassifyJob,
    EmbedJob,
    Encoded,
    FillMaskJob,
    Job,
    SparseJob,
    TokenEmbedJob,
)
from model import BertConfig, BertForMaskedLM, Capabilities, ModelError, pool
from model.heads import splade_weights, top_k_dims
from tokenization import WordPieceTokenizer

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Engine:
    """A checkpoint ready to serve; immutable once built, swapped as a whole on reload."""

    model: BertForMaskedLM
    tokenizer: WordPieceTokenizer
    path: Path
    sha256: str
    max_input_tokens: int  # min(configured limit, the model's limit)
    capabilities: Capabilities
    load_seconds: float = 0.0
    precision: str = "fp32"  # what the model computes in: fp32, bf16 or int8
    # How that was decided: requested, effective, reason, and the accuracy gate's figures.
    precision_report: dict[str, Any] = field(default_factory=dict)
    # The checkpoint's parameter count, taken before any conversion: int8 packs its weights
    # into kernel objects that are no longer nn.Parameters, so counting them then would not do;
    # dataclasses.replace carries it over to the converted engine.
    parameters: int | None = None

    def __post_init__(self) -> None:
        if self.parameters is None:
            self.parameters = self.model.num_parameters()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def version(self) -> str:
        """The version string: ``<checkpoint dir name>-<first 12 hex of its sha256>``."""
        return f"{self.name}-{self.sha256[:12]}"

    @property
    def config(self) -> BertConfig:
        return self.model.config

    @property
    def can_fill_mask(self) -> bool:
        return self.capabilities.fill_mask

    @property
    def can_classify(self) -> bool:
        return bool(self.capabilities.labels)

    @property
    def cost_model(self) -> CostModel:
        """This model's price list for the batcher and the chunk planner (``app.cost``)."""
        return CostModel.for_unpadded(self.config.hidden_size, self.config.intermediate_size)

    def info(self) -> dict[str, Any]:
        """What ``/info`` shows about the model."""
        caps = self.capabilities
        return {
            "version": self.version,
            "name": self.name,
            "sha256": self.sha256,
            # The architecture of the weights as loaded (a BertModel has no MLM head to announce).
            "config": {**self.config.to_dict(), "architectures": [caps.kind]},
            "vocab_size": self.tokenizer.vocab_size,
            "lowercase": self.tokenizer.lowercase,
            "max_input_tokens": self.max_input_tokens,
            "parameters": self.parameters,
            "load_seconds": round(self.load_seconds, 3),
            "precision": {"effective": self.precision, **self.precision_report},
            "capabilities": {
                "fill_mask": caps.fill_mask,
                "classify": self.can_classify,
                "labels": list(caps.labels),  # in label id order; [] without a classifier
                "pairs": self.can_classify,  # /predict takes [first, second] sentence pairs
                "rerank": caps.rerank,  # a cross-encoder: /rerank, /v1/rerank
                "score_activation": caps.score_activation,  # what rerank scores apply
                "sparse": caps.sparse,  # /embed_sparse (SPLADE from the MLM head)
                "embed": True,
                "embed_all": True,
                "sentence_similarity": True,
                "tokenize": True,
                "decode": True,
                "pooling": caps.pooling,
                "normalize": caps.normalize,
                "max_dimensions": self.config.hidden_size,  # the most `dimensions` may ask for
                "prompts": dict(caps.prompts),
                "default_prompt_name": caps.default_prompt_name,
                "max_tokens": self.max_input_tokens,
                "kind": caps.kind,
                "sentence_transformers": caps.sentence_transformers,
                "cross_encoder": caps.cross_encoder,
                "sparse_encoder": caps.sparse_encoder,
            },
        }

    # --- tokenization (tokenizer thread) -------------------------------------------------------
    def encode(
        self, text: str, *, truncate: bool, direction: str = "right", index: int = 0
    ) -> Encoded:
        """Tokenize one input with [CLS]/[SEP]; enforce the token limit or truncate.

        Truncation keeps [CLS] and [SEP] and drops tokens from the end ("right") or the start
        ("left") of the text. An input with no token besides the specials is refused.
        """
        enc = self.tokenizer.encode(text)
        ids, offsets = enc.ids, enc.offsets
        if len(ids) <= 2:
            raise InputValidationError(f"inputs[{index}] is empty (no tokens)")
        limit = self.max_input_tokens
        truncated = False
        if len(ids) > limit:
            if not truncate:
                raise InputValidationError(
                    f"inputs[{index}] has {len(ids)} tokens, more than the limit of {limit} "
                    "(send truncate=true to cut it)"
                )
            keep = limit - 2
            if direction == "left":
                body = slice(len(ids) - 1 - keep, len(ids) - 1)
            else:
                body = slice(1, 1 + keep)
            ids = [ids[0], *ids[body], ids[-1]]
            offsets = [offsets[0], *offsets[body], offsets[-1]]
            truncated = True
        return Encoded(ids=ids, offsets=list(offsets), truncated=truncated)

    def encode_pair(
        self,
        first: str,
        second: str,
        *,
        truncate: bool,
        strategy: str = "longest_first",
        index: int = 0,
        max_second: int | None = None,
    ) -> Encoded:
        """Tokenize a sentence pair as ``[CLS] first [SEP] second [SEP]`` with token type ids.

        Over the token limit it is refused, or with ``truncate`` cut by ``strategy`` (the
        tokenizer's: ``longest_first``, ``only_first``, ``only_second``); an ``only_*`` cut that
        cannot fit (the other text alone is too long) falls back to ``longest_first``.
        ``max_second`` first cuts the second text to that many tokens (Cohere's
        ``max_tokens_per_doc``), whatever ``truncate`` says.
        """
        tok, limit = self.tokenizer, self.max_input_tokens
        enc = tok.encode(first, second)
        n_first = enc.type_ids.count(0) - 2
        n_second = len(enc.ids) - n_first - 3
        if n_first < 1 or n_second < 1:
            side = "first" if n_first < 1 else "second"
            raise InputValidationError(f"inputs[{index}]: the {side} text has no tokens")
        if max_second is not None and n_second > max_second:
            cut = tok.encode(
                first, second, max_length=n_first + 3 + max_second, truncation="only_second"
            )
            if len(cut.ids) <= limit:
                return Encoded(list(cut.ids), list(cut.offsets), [], True, list(cut.type_ids))
        if len(enc.ids) > limit:
            if not truncate:
                raise InputValidationError(
                    f"inputs[{index}] (a pair) has {len(enc.ids)} tokens, more than the limit "
                    f"of {limit} (send truncate=true to cut it)"
                )
            try:
                enc = tok.encode(first, second, max_length=limit, truncation=strategy)
            except ValueError:
                enc = tok.encode(first, second, max_length=limit, truncation="longest_first")
            if 0 not in enc.sequence_ids or 1 not in enc.sequence_ids:
                raise InputValidationError(
                    f"inputs[{index}] (a pair) cannot be cut to {limit} tokens with a token of "
                    "each text left"
                )
        return Encoded(
            ids=list(enc.ids),
            offsets=list(enc.offsets),
            truncated=enc.truncated,
            type_ids=list(enc.type_ids),
        )

    def encode_pairs(
        self,
        pairs: list[tuple[str, str]],
        *,
        truncate: bool,
        strategy: str = "longest_first",
        max_second: int | None = None,
    ) -> list[Encoded]:
        return [
            self.encode_pair(
                a, b, truncate=truncate, strategy=strategy, index=i, max_second=max_second
            )
            for i, (a, b) in enumerate(pairs)
        ]

    def decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        """Token ids back to text (``/decode``) as transformers' fast tokenizer (and TEI)
        decode them; an id outside the vocabulary is a 422."""
        try:
            return self.tokenizer.decode(
                ids, skip_special_tokens=skip_special_tokens, wordpiece_cleanup=True
            )
        except (TypeError, ValueError) as e:
            raise InputValidationError(str(e)) from None

    def encode_fill_mask(self, texts: list[str], *, truncate: bool) -> list[Encoded]:
        """Tokenize fill-mask inputs; each must keep at least one [MASK]."""
        mask_id = self.tokenizer.mask_token_id
        out = []
        for i, text in enumerate(texts):
            enc = self.encode(text, truncate=truncate, index=i)
            enc.mask_positions = [p for p, t in enumerate(enc.ids) if t == mask_id]
            if not enc.mask_positions:
                why = " after truncation" if enc.truncated else ""
                raise InputValidationError(
                    f"inputs[{i}] has no {self.tokenizer.mask_token} token{why}"
                )
            out.append(enc)
        return out

    def encode_many(
        self, texts: list[str], *, truncate: bool, direction: str = "right"
    ) -> list[Encoded]:
        return [
            self.encode(t, truncate=truncate, direction=direction, index=i)
            for i, t in enumerate(texts)
        ]

    def target_ids(self, targets: list[str]) -> list[int]:
        """Ids of fill-mask targets: a vocabulary entry, or a text that is exactly one token.

        Deduplicated in the order given (transformers' pipeline also deduplicates).
        """
        ids: list[int] = []
        for t in targets:
            tid = self.tokenizer.token_to_id(t)
            if tid is None:
                pieces = self.tokenizer.tokenize(t) if t.strip() else []
                if len(pieces) != 1 or pieces[0] == self.tokenizer.unk_token:
                    raise InputValidationError(
                        f"target {t!r} is not a single token of the vocabulary"
                    )
                tid = self.tokenizer.token_to_id(pieces[0])
            if tid not in ids:
                ids.append(tid)
        return ids

    def tokens(self, text: str, add_special_tokens: bool) -> list[dict[str, Any]]:
        """``/tokenize``: every token with its id, text span and whether it is special."""
        enc = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        special = self.tokenizer.special_ids
        out = []
        for tid, tok, (start, stop) in zip(enc.ids, enc.tokens, enc.offsets, strict=True):
            # A [CLS]/[SEP] added around the text covers no characters; a literal "[MASK]"
            # written in the text is special but does have a span.
            covers = not (tid in special and start == stop)
            out.append(
                {
                    "id": tid,
                    "token": tok,
                    "text": text[start:stop] if covers else None,
                    "special": tid in special,
                    "start": start if covers else None,
                    "stop": stop if covers else None,
                }
            )
        return out

    # --- compute (model thread) ----------------------------------------------------------------
    def run_batch(self, jobs: list[Job]) -> list[Any]:
        """Compute every job of a batch; one result per job (``app.jobs``' result shapes)."""
        with torch.inference_mode():
            return self._run_batch(jobs)

    def _run_batch(self, jobs: list[Job]) -> list[Any]:
        rows = [(j, i, enc) for j, job in enumerate(jobs) for i, enc in enumerate(job.inputs)]
        rows.sort(key=lambda r: len(r[2]))  # similar lengths share a forward pass
        results: list[list[Any]] = [[None] * len(job.inputs) for job in jobs]
        lengths = [len(r[2]) for r in rows]
        for start, end in plan_chunks(lengths, self.cost_model):
            self._run_chunk(
                _Chunk.build(rows[start:end], jobs, self.tokenizer.pad_token_id), results
            )
        return results

    def _run_chunk(self, chunk: _Chunk, results: list[list[Any]]) -> None:
        """One forward pass over ``chunk``; each row's answer goes to ``results[job][input]``."""
        fill, classify = chunk.rows_of(FillMaskJob), chunk.rows_of(ClassifyJob)
        hidden = None  # (B, T, H): every token's final vector, computed only when needed
        if fill:  # only ever on a model with an MLM head (ServeState checks)
            # Fast path: with no other row in this pass, the last layer runs only at the
            # [MASK] positions (return_hidden=False); the other rows need every token.
            hidden = self._fill_mask(chunk, fill, results, need_hidden=len(fill) < len(chunk))
        elif len(classify) < len(chunk):
            hidden = self.model.encode(chunk.ids, chunk.attn, chunk.types)  # (B, T, H)
        if hidden is not None:
            self._embed(chunk, hidden, results)
            self._token_vectors(chunk, hidden, results)
            self._sparse(chunk, hidden, results)
        if classify:  # only ever on a model with a classifier (ServeState checks)
            self._classify(chunk, classify, hidden, results)

    def _fill_mask(
        self, chunk: _Chunk, rows: list[int], results: list[list[Any]], *, need_hidden: bool
    ) -> torch.Tensor | None:
        pred = torch.zeros_like(chunk.ids, dtype=torch.bool)  # (B, T)
        for k in rows:
            pred[k, chunk.rows[k][2].mask_positions] = True
        out = self.model(
            chunk.ids, chunk.attn, chunk.types, prediction_mask=pred, return_hidden=need_hidden
        )
        probs = out.logits.float().softmax(dim=-1)  # (N, V), masks in row-major order
        offset = 0
        for k in rows:
            j, i, enc = chunk.rows[k]
            n = len(enc.mask_positions)
            job = chunk.jobs[j]
            assert isinstance(job, FillMaskJob)
            results[j][i] = _top_candidates(
                probs[offset : offset + n], job, self.tokenizer.vocab_size
            )
            offset += n
        return out.last_hidden_state  # (B, T, H) or None

    def _embed(self, chunk: _Chunk, hidden: torch.Tensor, results: list[list[Any]]) -> None:
        rows = chunk.rows_of(EmbedJob)
        for pooling in {chunk.jobs[chunk.rows[k][0]].pooling for k in rows}:
            rows_p = [k for k in rows if chunk.jobs[chunk.rows[k][0]].pooling == pooling]
            sel = torch.tensor(rows_p)
            h, m = hidden.index_select(0, sel), chunk.attn.index_select(0, sel)  # (E, T, H)
            # Pooled, cut and normalized in fp32 whatever the encoder's matrices ran in: a unit
            # vector has norm 1 to float32 rounding under every precision.
            vectors = pool(h.float(), m, pooling)  # (E, H)
            for r, k in enumerate(rows_p):
                j, i, _ = chunk.rows[k]
                job = chunk.jobs[j]
                assert isinstance(job, EmbedJob)
                vec = vectors[r, : job.dimensions]  # (D,): Matryoshka, then normalize
                if job.normalize:
                    vec = F.normalize(vec, p=2.0, dim=-1)
                results[j][i] = vec.tolist()

    def _token_vectors(self, chunk: _Chunk, hidden: torch.Tensor, results: list[list[Any]]) -> None:
        for k in chunk.rows_of(TokenEmbedJob):
            j, i, enc = chunk.rows[k]
            results[j][i] = hidden[k, : len(enc)].float().tolist()  # (T_k, H)

    def _sparse(self, chunk: _Chunk, hidden: torch.Tensor, results: list[list[Any]]) -> None:
        """SPLADE: per row, the MLM head on its counted tokens only, one row at a time (a
        (T, V) block, never (B, T, V)), weights pooled over the tokens, top dims kept."""
        for k in chunk.rows_of(SparseJob):
            j, i, enc = chunk.rows[k]
            job = chunk.jobs[j]
            assert isinstance(job, SparseJob)
            keep = torch.ones(len(enc), dtype=torch.bool)  # (T_k,)
            if job.skip_special:
                keep[enc.special_positions] = False
            h = hidden[k, : len(enc)][keep]  # (n, H)
            weights = splade_weights(self.model.mlm_head(h).float(), job.activation)  # (n, V)
            pooled = weights.amax(0) if job.pooling == "max" else weights.sum(0)  # (V,)
            vec = top_k_dims(pooled[: self.tokenizer.vocab_size][None], job.max_active_dims)[0]
            nonzero = vec.nonzero().squeeze(1)  # (Z,) ascending ids
            results[j][i] = list(zip(nonzero.tolist(), vec[nonzero].tolist(), strict=True))

    def _classify(
        self,
        chunk: _Chunk,
        rows: list[int],
        hidden: torch.Tensor | None,
        results: list[list[Any]],
    ) -> None:
        if hidden is None:
            # Fast path: a pass of classifications alone runs its last layer at [CLS] only.
            logits = self.model.classify(chunk.ids, chunk.attn, chunk.types).logits  # (B, C)
        else:  # the [CLS] vectors are there already: the head alone
            logits = self.model.classifier(hidden[torch.tensor(rows), 0])  # (K, C)
        for r, k in enumerate(rows):
            j, i, _ = chunk.rows[k]
            job = chunk.jobs[j]
            assert isinstance(job, ClassifyJob)
            results[j][i] = SCORE_FUNCTIONS[job.function](logits[r].float()).tolist()  # (C,)

    def self_test(self) -> None:
        """A forward pass on a fixed input; CheckpointLoadError unless shapes and values are sane."""
        tok = self.tokenizer
        jobs: list[Job] = [
            EmbedJob(inputs=self.encode_many(["a test ."], truncate=True), normalize=False)
        ]
        if self.can_fill_mask:
            enc = self.encode_fill_mask([f"the {tok.mask_token} is here ."], truncate=True)
            jobs.append(FillMaskJob(inputs=enc, top_k=1))
        if self.can_classify:
            inputs = self.encode_many(["a test ."], truncate=True)
            jobs.append(ClassifyJob(inputs=inputs, function="none"))
        try:
            results = self.run_batch(jobs)
        except (ModelError, RuntimeError, ValueError) as e:
            raise CheckpointLoadError(f"{self.path}: the test forward pass failed ({e})") from e
        vec = torch.tensor(results[0][0])
        finite = bool(torch.isfinite(vec).all())
        for job, result in zip(jobs, results, strict=True):
            if isinstance(job, FillMaskJob):
                score = result[0][0][0][1]
                finite = finite and 0.0 <= score <= 1.0
            elif isinstance(job, ClassifyJob):
                logits = torch.tensor(result[0])
                finite = finite and bool(torch.isfinite(logits).all())
                if logits.shape != (len(self.capabilities.labels),):
                    raise CheckpointLoadError(
                        f"{self.path}: the classifier gives {tuple(logits.shape)} scores, "
                        f"expected one per label ({len(self.capabilities.labels)},)"
                    )
        if not finite:
            raise CheckpointLoadError(f"{self.path}: the test forward pass gave non-finite values")
        if vec.shape != (self.config.hidden_size,):
            raise CheckpointLoadError(
                f"{self.path}: embedding has shape {tuple(vec.shape)}, "
                f"expected ({self.config.hidden_size},)"
            )


@dataclass(eq=False)
class _Chunk:
    """One forward pass's rows (job index, input index, encoded input), padded into tensors."""

    rows: list[tuple[int, int, Encoded]]
    jobs: list[Job]
    ids: torch.Tensor  # (B, T)
    attn: torch.Tensor  # (B, T): 1 for real tokens
    types: torch.Tensor | None  # (B, T) token type ids; None when every row is one text

    @classmethod
    def build(cls, rows: list[tuple[int, int, Encoded]], jobs: list[Job], pad_id: int) -> _Chunk:
        T = max(len(enc) for _, _, enc in rows)
        ids = torch.tensor([enc.ids + [pad_id] * (T - len(enc)) for _, _, enc in rows])
        attn = torch.tensor([[1] * len(enc) + [0] * (T - len(enc)) for _, _, enc in rows])
        types = None
        if any(enc.type_ids is not None for _, _, enc in rows):
            types = torch.tensor(
                [(enc.type_ids or [0] * len(enc)) + [0] * (T - len(enc)) for _, _, enc in rows]
            )
        return cls(rows, jobs, ids, attn, types)

    def __len__(self) -> int:
        return len(self.rows)

    def rows_of(self, kind: type) -> list[int]:
        """Row indices of this pass whose job is of ``kind``."""
        return [k for k, (j, _, _) in enumerate(self.rows) if type(self.jobs[j]) is kind]


def _top_candidates(
    probs: torch.Tensor, job: FillMaskJob, n_tokens: int
) -> list[list[tuple[int, float]]]:
    """Per mask row of ``probs`` (n, V): the top_k (id, probability), restricted to targets.

    Only ids below ``n_tokens`` (the tokenizer's vocabulary) are candidates: a model may have
    more embedding rows than its tokenizer has tokens, and those rows have no text.
    """
    if job.target_ids is not None:
        targets = torch.tensor(job.target_ids)
        values, idx = probs.index_select(1, targets).topk(min(job.top_k, len(job.target_ids)))
        token_ids = targets[idx]  # (n, k)
    else:
        probs = probs[:, :n_tokens]  # (n, V'), V' <= V
        values, token_ids = probs.topk(min(job.top_k, probs.shape[-1]))  # (n, k)
    return [
        list(zip(ids_row, vals_row, strict=True))
        for ids_row, vals_row in zip(token_ids.tolist(), values.tolist(), strict=True)
    ]
