"""Engine: one loaded checkpoint (model + tokenizer + version + capabilities) and the work done
with it.

* ``Engine.self_test()``: a forward pass on a fixed input whose shapes and values must be sane
  (``app.loading.load_engine`` builds engines and calls it).
* ``Engine.capabilities``: what the model can do (fill-mask needs an MLM head, classification a
  classifier, whose labels it lists) and the defaults of its embeddings (pooling, normalisation,
  token limit), which ``/info`` reports.
* ``Engine.encode*`` turn request texts into ``Encoded`` inputs (run in the tokenizer thread):
  truncation, the token limit, ``[MASK]`` positions, fill-mask targets.
* ``Engine.run_batch(jobs)`` computes a batch of fill-mask, embedding and classification jobs in
  one go (run in the dedicated model thread, under ``torch.inference_mode``): inputs sorted by
  length, split into forward passes by ``plan_chunks``, MLM logits only at ``[MASK]`` positions,
  and a pass of classifications alone runs its last layer at ``[CLS]`` only.

Deliberately not here: loading and the choice of precision (``app.loading``,
``app.precision``), HTTP, queues, threads (``app.service`` and ``app.batcher`` own those).
Sentence pairs (token type 1) are not classified: every input is one text.
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
from app.jobs import SCORE_FUNCTIONS, ClassifyJob, EmbedJob, Encoded, FillMaskJob, Job
from model import BertConfig, BertForMaskedLM, Capabilities, ModelError, pool
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
            "parameters": self.model.num_parameters(),
            "load_seconds": round(self.load_seconds, 3),
            "precision": {"effective": self.precision, **self.precision_report},
            "capabilities": {
                "fill_mask": caps.fill_mask,
                "classify": self.can_classify,
                "labels": list(caps.labels),  # in label id order; [] without a classifier
                "embed": True,
                "sentence_similarity": True,
                "tokenize": True,
                "pooling": caps.pooling,
                "normalize": caps.normalize,
                "max_tokens": self.max_input_tokens,
                "kind": caps.kind,
                "sentence_transformers": caps.sentence_transformers,
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
        """Compute every job of a batch; one result per job (FillMaskResult, EmbedResult or
        ClassifyResult)."""
        with torch.inference_mode():
            return self._run_batch(jobs)

    def _run_batch(self, jobs: list[Job]) -> list[Any]:
        rows = [(j, i, enc) for j, job in enumerate(jobs) for i, enc in enumerate(job.inputs)]
        rows.sort(key=lambda r: len(r[2]))  # similar lengths share a forward pass
        results: list[list[Any]] = [[None] * len(job.inputs) for job in jobs]
        pad_id = self.tokenizer.pad_token_id
        lengths = [len(r[2]) for r in rows]
        for start, end in plan_chunks(lengths, self.cost_model):
            chunk = rows[start:end]
            T = len(chunk[-1][2])
            ids = torch.tensor([enc.ids + [pad_id] * (T - len(enc)) for _, _, enc in chunk])
            attn = torch.tensor([[1] * len(enc) + [0] * (T - len(enc)) for _, _, enc in chunk])
            kinds = [type(jobs[j]) for j, _, _ in chunk]
            fill_rows = [k for k, kind in enumerate(kinds) if kind is FillMaskJob]
            embed_rows = [k for k, kind in enumerate(kinds) if kind is EmbedJob]
            class_rows = [k for k, kind in enumerate(kinds) if kind is ClassifyJob]
            hidden = None  # (B, T, H): every token's final vector, computed only when needed
            if fill_rows:  # only ever on a model with an MLM head (ServeState checks)
                pred = torch.zeros_like(ids, dtype=torch.bool)  # (B, T)
                for k in fill_rows:
                    pred[k, chunk[k][2].mask_positions] = True
                # Fast path: with no other row in this pass, the last layer runs only at the
                # [MASK] positions (return_hidden=False); the other rows need every token.
                need_hidden = len(fill_rows) < len(chunk)
                out = self.model(
                    ids, attention_mask=attn, prediction_mask=pred, return_hidden=need_hidden
                )
                hidden, logits = out.last_hidden_state, out.logits  # (B, T, H) or None, (N, V)
                probs = logits.float().softmax(dim=-1)  # (N, V), masks in row-major order
                offset = 0
                for k in fill_rows:
                    j, i, enc = chunk[k]
                    n = len(enc.mask_positions)
                    results[j][i] = _top_candidates(
                        probs[offset : offset + n], jobs[j], self.tokenizer.vocab_size
                    )
                    offset += n
            elif embed_rows:
                hidden = self.model.encode(ids, attention_mask=attn)  # (B, T, H)
            for pooling in {jobs[chunk[k][0]].pooling for k in embed_rows}:
                rows_p = [k for k in embed_rows if jobs[chunk[k][0]].pooling == pooling]
                sel = torch.tensor(rows_p)
                h, m = hidden.index_select(0, sel), attn.index_select(0, sel)  # (E, T, H), (E, T)
                # Pooled and normalized in fp32 whatever the encoder's matrices ran in: a unit
                # vector has norm 1 to float32 rounding under every precision.
                vectors = pool(h.float(), m, pooling)  # (E, H)
                for r, k in enumerate(rows_p):
                    j, i, _ = chunk[k]
                    vec = vectors[r]  # (H,)
                    if jobs[j].normalize:
                        vec = F.normalize(vec, p=2.0, dim=-1)
                    results[j][i] = vec.float().tolist()
            if class_rows:  # only ever on a model with a classifier (ServeState checks)
                if hidden is None:
                    # Fast path: a pass of classifications alone runs its last layer at [CLS] only.
                    class_logits = self.model.classify(ids, attention_mask=attn).logits  # (B, C)
                else:  # the [CLS] vectors are there already: the head alone
                    cls = hidden[torch.tensor(class_rows), 0]  # (K, H)
                    class_logits = self.model.classifier(cls)  # (K, C)
                for r, k in enumerate(class_rows):
                    j, i, _ = chunk[k]
                    score = SCORE_FUNCTIONS[jobs[j].function]
                    results[j][i] = score(class_logits[r].float()).tolist()  # (C,)
        return results

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
