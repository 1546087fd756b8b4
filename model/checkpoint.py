"""Checkpoint directories: the one loader (`load_checkpoint`) and the one writer (`save_checkpoint`).

`load_checkpoint(directory, BertForMaskedLM, tokenizer_factory=WordPieceTokenizer.from_pretrained)`
returns a `LoadedCheckpoint`: the model, the tokenizer, the sha256 of the weights' bytes and the
model's `Capabilities`. The server (app/engine.py), bert-convert and the trainer's `init_from` all
load through it; `BertForMaskedLM.from_pretrained` is the same call keeping the model only.

What it loads, recognised from the directory itself (see `model/layout.py` for the JSON side):
- transformers' BertForMaskedLM (decoder bias stored apart or tied, decoder weight stored once or
  twice), BertForPreTraining (MLM + NSP heads; the NSP head is loaded on request), BertModel (the
  encoder alone: tensor names without a prefix, no MLM head), BertForSequenceClassification (a
  text classifier: `classifier.*`, labels from config.json's id2label), and ours, including
  rotary-position checkpoints (RoFormerForMaskedLM / RoFormerModel /
  RoFormerForSequenceClassification: "roformer." names);
- a sentence-transformers directory around any of those: a SentenceTransformer (the Transformer
  module's model, with the Pooling module's pooling, the Normalize module and
  sentence_bert_config.json's max_seq_length and do_lower_case as the defaults of embeddings), a
  CrossEncoder (a classifier scoring text pairs, with the activation its predict applies) or a
  SparseEncoder (an MLM head and SpladePooling: SPLADE vectors), each with its named prompts;
- the weights as model.safetensors, shards, or pytorch_model.bin read without unpickling code
  (`allow_pickle=False` refuses the last, as the server does).
Which heads exist is read from the tensor names: `cls.predictions.*` is an MLM head (fill-mask,
and SPLADE vectors), `cls.seq_relationship.*` an NSP head. Anything wrong is one
`CheckpointError` (or `ConfigError`) sentence naming the file or tensor. `Capabilities` says
what the result can do and with which defaults, reproducing sentence-transformers' encode and
predict where the directory is one of its models.

Why the model class and the tokenizer factory are parameters: `model/` depends only on torch, so
it may not import `tokenization/`; the caller passes the tokenizer factory (the server and trainer
pass `WordPieceTokenizer.from_pretrained`; it gets the tokenizer's directory and
`lowercase_input`). And model/bert.py's `from_pretrained`/`save_pretrained` call into this module,
so this module never imports model/bert.py: it builds the class it is given, and the dependency
between the two runs one way.

Writes are atomic (`atomicio`): both files go to temporary names in the target directory and are
renamed over the old ones only once both are complete. An encoder without MLM head is written as
transformers' BertModel (or RoFormerModel). Deliberately not handled: TensorFlow/Flax weights,
sharded writes, pre-LN export to transformers (it cannot represent it; convert.py refuses).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from atomicio import atomic_write_files
from model.config import CLASSIFIER_SUFFIX, BertConfig
from model.errors import CheckpointError, ModelError
from model.layout import (
    CONFIG_NAME,
    SENTENCE_TRANSFORMER,
    CheckpointLayout,
    SpladeSettings,
    read_layout,
)
from model.rotary import roformer_sinusoids
from model.weights import (
    CLASSIFIER_PREFIX,
    MLM_PREFIX,
    NSP_PREFIX,
    ROFORMER_SINUSOIDS,
    WEIGHTS_NAME,
    base_prefix,
    from_hf_state_dict,
    read_weights,
    to_hf_state_dict,
)

logger = logging.getLogger(__name__)

# A tokenizer factory: (the tokenizer's directory, lowercase_input=...) -> a tokenizer with
# `vocab_size` (and `model_max_length`).
TokenizerFactory = Callable[..., Any]


@dataclass(frozen=True)
class Capabilities:
    """What a loaded checkpoint can do, and the defaults that reproduce its own library's outputs.

    Every field added after the first seven has a default, that of a plain model directory.
    """

    kind: str  # transformers' class for its weights: BertForMaskedLM, BertModel, ...
    sentence_transformers: bool  # a sentence-transformers directory (any of its model classes)
    fill_mask: bool  # it has an MLM head
    labels: tuple[str, ...]  # a text classifier's labels in id order; () without one
    pooling: str  # default pooling of embeddings (model.config.POOLINGS)
    normalize: bool  # embeddings are unit vectors by default
    # The longest input, special tokens included: sentence-transformers' max_seq_length, else
    # (sentence-transformers directories and classifiers) the tokenizer's model_max_length, capped
    # at max_position_embeddings; the length CrossEncoder.predict truncates pairs to.
    max_tokens: int
    # A classifier with one label: a reranker, one relevance score per (query, document) pair.
    rerank: bool = False
    # What CrossEncoder.predict applies to a classifier's logits (model.config.SCORE_ACTIVATIONS,
    # model.heads.activate_scores); None without a classifier.
    score_activation: str | None = None
    cross_encoder: bool = False  # saved by sentence-transformers' CrossEncoder
    sparse: bool = False  # SPLADE vectors (an MLM head): BertForMaskedLM.splade / heads.splade
    sparse_encoder: bool = False  # a sentence-transformers SparseEncoder (trained for SPLADE)
    splade_pooling: str = "max"  # SpladePooling's pooling_strategy (config.SPLADE_POOLINGS)
    splade_activation: str = "relu"  # its activation_function (config.SPLADE_ACTIVATIONS)
    splade_max_active_dims: int | None = None  # SparseEncoder keeps this many weights; None: all
    # sentence-transformers' named prompts (config_sentence_transformers.json), each prepended as
    # is to a text (to the first text of a pair), and the one used when none is named.
    prompts: dict[str, str] = field(default_factory=dict, hash=False)
    default_prompt_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class LoadedCheckpoint:
    """A checkpoint ready to use: the model (eval mode), its tokenizer, the weights' sha256."""

    model: Any
    tokenizer: Any  # None without a tokenizer factory
    sha256: str
    capabilities: Capabilities
    layout: CheckpointLayout


def load_checkpoint(
    directory: str | Path,
    model_class: Callable[..., Any],
    *,
    tokenizer_factory: TokenizerFactory | None = None,
    map_location: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    nsp_head: bool = False,
    allow_pickle: bool = True,
    root: Path | None = None,
) -> LoadedCheckpoint:
    """Load a checkpoint directory (see the module docstring for what is accepted).

    `model_class(config, nsp_head=..., mlm_head=...)` builds the model (`BertForMaskedLM`);
    `nsp_head=True` loads BERT's NSP head too (the checkpoint must have it). With `root`, every
    file of the directory must resolve inside it, so a symlink cannot make us read elsewhere.
    dtype=None gives float32 whatever the file stores.
    """
    directory = Path(directory)
    if root is not None:
        check_inside(directory, root)
    layout = read_layout(directory)
    config = layout.config
    raw, sha256 = read_weights(
        layout.model_dir, allow_pickle=allow_pickle, map_location=map_location
    )
    source = str(layout.model_dir)
    prefix, has_mlm, has_nsp, has_cls = detect_heads(raw, config)
    if nsp_head and not has_nsp:
        raise CheckpointError(f"{source}: no NSP head (cls.seq_relationship) to load")
    if has_cls and not config.labels:
        raise CheckpointError(
            f"{source}: the weights hold a classification head but config.json names no labels "
            "(architectures ...ForSequenceClassification with id2label)"
        )
    if config.labels and not has_cls:
        # Labels LABEL_0, LABEL_1, ... are what transformers assumes of a classifier config
        # without id2label: perhaps an encoder's config.json only renamed to a classifier.
        unnamed = config.labels == tuple(f"LABEL_{i}" for i in range(len(config.labels)))
        hint = "; a sequence classifier's config needs id2label, else transformers assumes two"
        raise CheckpointError(
            f"{source}: config.json describes a classifier ({len(config.labels)} labels"
            f"{hint if unnamed else ''}) but the weights have no classifier tensors"
        )
    if layout.splade is not None and not has_mlm:
        raise CheckpointError(
            f"{source}: a SparseEncoder (SpladePooling) needs an MLM head (cls.predictions), "
            "and the weights have none"
        )
    # Built on the meta device and filled by assignment: no time spent on a random init that the
    # checkpoint overwrites, and the tensors stay on map_location.
    with torch.device("meta"):
        model = model_class(config, nsp_head=nsp_head, mlm_head=has_mlm, classifier=has_cls)
    state = from_hf_state_dict(raw, model, prefix, source=source)
    del raw
    dtype = dtype or torch.float32
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.tie_weights()  # assign=True made two Parameters of the tied tensor; make it one again
    model.eval()

    tokenizer = None
    sentence = layout.sentence
    if tokenizer_factory is not None:
        lower = sentence is not None and sentence.do_lower_case
        try:
            tokenizer = tokenizer_factory(layout.model_dir, lowercase_input=lower)
        except (ModelError, ValueError) as e:  # the factory's own error for bad tokenizer files
            raise CheckpointError(f"{_prefixed(e, source)}") from None
        if tokenizer.vocab_size > config.vocab_size:
            raise CheckpointError(
                f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                f"vocab_size is {config.vocab_size}: ids would fall outside the embedding table"
            )
    max_tokens = config.max_position_embeddings
    if sentence is not None and sentence.max_seq_length is not None:
        max_tokens = min(max_tokens, sentence.max_seq_length)
    elif (sentence is not None or has_cls) and tokenizer is not None:
        # sentence-transformers (CrossEncoder for any classifier) truncates at the tokenizer's.
        max_tokens = min(max_tokens, tokenizer.model_max_length)
    embeddings = sentence is not None and sentence.model_type == SENTENCE_TRANSFORMER
    splade = layout.splade or SpladeSettings()
    capabilities = Capabilities(
        kind=_kind(config, has_mlm, has_nsp, has_cls),
        sentence_transformers=sentence is not None or layout.cross_encoder,
        fill_mask=has_mlm,
        labels=config.labels,
        pooling=config.pooling,
        normalize=sentence.normalize if embeddings else True,
        max_tokens=max_tokens,
        rerank=len(config.labels) == 1,
        score_activation=layout.score_activation,
        cross_encoder=layout.cross_encoder,
        sparse=has_mlm,
        sparse_encoder=layout.splade is not None,
        splade_pooling=splade.pooling,
        splade_activation=splade.activation,
        splade_max_active_dims=splade.max_active_dims,
        prompts=dict(sentence.prompts) if sentence is not None else {},
        default_prompt_name=sentence.default_prompt_name if sentence is not None else None,
    )
    logger.info(
        "loaded %s: %s%s, %d parameters, sha256 %s",
        directory,
        capabilities.kind,
        " (sentence-transformers)" if sentence is not None else "",
        model.num_parameters(),
        sha256[:12],
    )
    return LoadedCheckpoint(model, tokenizer, sha256, capabilities, layout)


def detect_heads(raw: dict[str, Tensor], config: BertConfig) -> tuple[str, bool, bool, bool]:
    """(encoder name prefix, has an MLM head, an NSP head, a classifier), from the tensor names."""
    base = base_prefix(config)
    prefix = base if any(k.startswith(base + ".") for k in raw) else ""
    has_mlm = any(k.startswith(MLM_PREFIX) for k in raw)
    has_nsp = any(k.startswith(NSP_PREFIX) for k in raw)
    has_cls = any(k.startswith(CLASSIFIER_PREFIX) for k in raw)
    return prefix, has_mlm, has_nsp, has_cls


def _kind(config: BertConfig, mlm: bool, nsp: bool, classifier: bool = False) -> str:
    family = "RoFormer" if config.position_embedding_type == "rotary" else "Bert"
    if classifier:
        return f"{family}{CLASSIFIER_SUFFIX}"
    if mlm and nsp and family == "Bert":
        return "BertForPreTraining"
    return f"{family}ForMaskedLM" if mlm else f"{family}Model"


def _prefixed(error: Exception, source: str) -> str:
    """The error's message, naming the directory once."""
    text = str(error)
    return text if source in text else f"{source}: {text}"


def check_inside(directory: Path, root: Path) -> None:
    """CheckpointError unless the directory and every file in it (and in its module
    subdirectories) resolve inside `root` (resolved)."""
    if not _inside(directory, root):
        raise CheckpointError(f"{directory} resolves outside the models root")
    for path in sorted(directory.rglob("*")):
        if (path.is_symlink() or path.is_file()) and not _inside(path, root):
            rel = path.relative_to(directory)
            raise CheckpointError(f"{directory}: {rel} resolves outside the models root")


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve(strict=True).is_relative_to(root)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return False


# ----------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(model: Any, directory: str | Path) -> None:
    """Write config.json and model.safetensors into `directory` (created if needed), atomically.

    A model with an MLM head is written as transformers' BertForMaskedLM (RoFormerForMaskedLM
    for rotary positions); one with a classifier as BertForSequenceClassification
    (RoFormerForSequenceClassification); one without heads as BertModel (RoFormerModel), with
    unprefixed names as transformers writes those. Refuses (CheckpointError) to write non-finite weights, so a
    diverged run cannot overwrite a good checkpoint.
    """
    directory = Path(directory)
    config: BertConfig = model.config
    if model.classifier is None and config.labels:  # an encoder saved without its classifier
        config = dataclasses.replace(config, labels=(), problem_type=None)
    headless = model.mlm_head is None and model.classifier is None
    prefix = "" if headless else base_prefix(config)
    tensors: dict[str, Tensor] = {}
    for key, tensor in to_hf_state_dict(model, prefix).items():
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"refusing to save: tensor {key} contains NaN or Inf values")
        # clone(): safetensors refuses tensors sharing storage (the q/k/v views of qkv).
        tensors[key] = tensor.detach().to("cpu").contiguous().clone()
    if config.position_embedding_type == "rotary":
        name = f"{prefix}.{ROFORMER_SINUSOIDS}" if prefix else ROFORMER_SINUSOIDS
        tensors[name] = roformer_sinusoids(config.max_position_embeddings, config.head_size)
    data = config.to_dict()
    if headless:
        data["architectures"] = [data["architectures"][0].replace("ForMaskedLM", "Model")]
    elif model.nsp_head is not None and _kind(config, True, True) == "BertForPreTraining":
        data["architectures"] = ["BertForPreTraining"]  # MLM + NSP heads, transformers' layout
    data["dtype"] = str(model.dtype).removeprefix("torch.")
    config_text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_files(
            {
                directory / WEIGHTS_NAME: lambda p: save_file(
                    tensors, str(p), metadata={"format": "pt"}
                ),
                directory / CONFIG_NAME: lambda p: p.write_text(config_text, encoding="utf-8"),
            }
        )
    except OSError as e:
        raise CheckpointError(f"{directory}: cannot write checkpoint files ({e})") from e
    logger.info("saved %s", directory)
