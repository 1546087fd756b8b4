"""Weights files: transformers' tensor names for our modules, and reading weights safely.

Names: our `BertForMaskedLM` state dict maps onto transformers' names under a prefix: "bert."
(BertForMaskedLM, BertForPreTraining), "roformer." (rotary positions: RoFormerForMaskedLM), or
none (a bare BertModel / RoFormerModel, as transformers saves an encoder without heads). Our
fused qkv is split into query/key/value on save and concatenated on load; the tied decoder weight
is the word embedding, stored once.

Reading (`read_weights`): model.safetensors, a sharded model.safetensors.index.json, or (unless
refused) pytorch_model.bin through `torch.load(weights_only=True)`, which never unpickles code.
Every file is read once: its bytes are hashed and parsed, so the sha256 names exactly the weights
in memory. Validation (`from_hf_state_dict`): missing, unexpected, misshapen, non-float or
non-finite tensors, and tied weights stored twice with different values, are each a
`CheckpointError` naming the tensor; old "gamma"/"beta" LayerNorm names and the decoder bias
stored under either of its names are accepted.

Deliberately not here: which heads a directory has and building the model (`model/checkpoint.py`),
TensorFlow/Flax weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor

from model.config import BertConfig
from model.errors import CheckpointError

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
SHARDED_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_WEIGHTS_NAME = "pytorch_model.bin"

DECODER_WEIGHT = "cls.predictions.decoder.weight"
DECODER_BIAS = "cls.predictions.decoder.bias"
MLM_BIAS = "cls.predictions.bias"
MLM_PREFIX = "cls.predictions."
NSP_PREFIX = "cls.seq_relationship."
CLASSIFIER_PREFIX = "classifier."  # BertForSequenceClassification / RoFormer...'s head
# RoFormer's fixed sinusoidal table: written so transformers finds every tensor it expects,
# ignored on load (rotary angles are computed, not stored).
ROFORMER_SINUSOIDS = "encoder.embed_positions.weight"
# Buffers and heads a checkpoint may carry that no model of ours uses (relative to the prefix).
_IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids", ROFORMER_SINUSOIDS)
_MAX_LISTED = 8  # how many key names an error message lists before "... and N more"


# ----------------------------------------------------------------------------------------------
# Names


def base_prefix(config: BertConfig) -> str:
    """The encoder's name inside transformers' models with heads: "bert", or "roformer"."""
    return "roformer" if config.position_embedding_type == "rotary" else "bert"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def key_map(
    config: BertConfig,
    *,
    prefix: str | None = None,
    mlm_head: bool = True,
    nsp_head: bool = False,
    classifier: bool = False,
) -> list[tuple[str, tuple[str, ...]]]:
    """(our state-dict key, HF key(s)) pairs; three HF keys are concatenated along dim 0.

    `prefix` is the encoder's name ("bert", "roformer" or "" for a bare encoder; None: the
    config's `base_prefix`). The tied decoder weight is absent: it is the word embedding. For
    pre-LN, the per-layer LayerNorms keep the HF names of the post-LN ones they replace
    (attention.output.LayerNorm is the norm before attention, output.LayerNorm the one before the
    FFN) and the final norm is `<prefix>.encoder.LayerNorm`, a name transformers does not know.
    """
    base = base_prefix(config) if prefix is None else prefix
    pairs: list[tuple[str, tuple[str, ...]]] = []

    def add(ours: str, *hf: str) -> None:
        for suffix in ("weight", "bias"):
            pairs.append((f"{ours}.{suffix}", tuple(f"{h}.{suffix}" for h in hf)))

    pairs.append(("embeddings.word.weight", (_join(base, "embeddings.word_embeddings.weight"),)))
    if config.position_embedding_type == "absolute":
        pairs.append(
            (
                "embeddings.position.weight",
                (_join(base, "embeddings.position_embeddings.weight"),),
            )
        )
    pairs.append(
        (
            "embeddings.token_type.weight",
            (_join(base, "embeddings.token_type_embeddings.weight"),),
        )
    )
    add("embeddings.norm", _join(base, "embeddings.LayerNorm"))
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers.{i}", _join(base, f"encoder.layer.{i}")
        add(
            f"{ours}.attention.qkv",
            f"{hf}.attention.self.query",
            f"{hf}.attention.self.key",
            f"{hf}.attention.self.value",
        )
        add(f"{ours}.attention.out", f"{hf}.attention.output.dense")
        add(f"{ours}.attn_norm", f"{hf}.attention.output.LayerNorm")
        add(f"{ours}.ffn.up", f"{hf}.intermediate.dense")
        add(f"{ours}.ffn.down", f"{hf}.output.dense")
        add(f"{ours}.ffn_norm", f"{hf}.output.LayerNorm")
    if config.norm_position == "pre":
        add("final_norm", _join(base, "encoder.LayerNorm"))
    if mlm_head:
        add("mlm_head.dense", "cls.predictions.transform.dense")
        add("mlm_head.norm", "cls.predictions.transform.LayerNorm")
        pairs.append(("mlm_head.bias", (MLM_BIAS,)))
    if nsp_head:
        add("nsp_head.pooler", _join(base, "pooler.dense"))
        add("nsp_head.classifier", "cls.seq_relationship")
    if classifier and config.position_embedding_type == "rotary":  # RoFormerClassificationHead
        add("classifier.dense", "classifier.dense")
        add("classifier.out", "classifier.out_proj")
    elif classifier:  # BertForSequenceClassification: the pooler, then a Linear
        add("classifier.dense", _join(base, "pooler.dense"))
        add("classifier.out", CLASSIFIER_PREFIX.rstrip("."))
    return pairs


def to_hf_state_dict(model: Any, prefix: str | None = None) -> dict[str, Tensor]:
    """A model's parameters under HF names (views of the parameters; qkv split into three).

    `model` is a `BertForMaskedLM` (duck-typed: `config`, `mlm_head`, `nsp_head`, `classifier`,
    `state_dict`).
    """
    state = model.state_dict()
    out: dict[str, Tensor] = {}
    pairs = key_map(
        model.config,
        prefix=prefix,
        mlm_head=model.mlm_head is not None,
        nsp_head=model.nsp_head is not None,
        classifier=model.classifier is not None,
    )
    for ours, hf_keys in pairs:
        parts = state[ours].chunk(len(hf_keys), dim=0) if len(hf_keys) > 1 else (state[ours],)
        out.update(zip(hf_keys, parts, strict=True))
    return out


def _listed(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def _check_tensor(name: str, tensor: Any, shape: tuple[int, ...], source: str) -> None:
    if not isinstance(tensor, Tensor):
        raise CheckpointError(f"{source}: {name} is a {type(tensor).__name__}, not a tensor")
    if tuple(tensor.shape) != shape:
        raise CheckpointError(
            f"{source}: tensor {name} has shape {tuple(tensor.shape)} but the config expects "
            f"{shape} (does config.json match the weights?)"
        )
    if not tensor.is_floating_point():
        raise CheckpointError(f"{source}: tensor {name} has dtype {tensor.dtype}, not a float")
    if not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"{source}: tensor {name} contains NaN or Inf values")


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.to(b.dtype), b))


def canonical_names(raw: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """The tensors under today's names: TF-era LayerNorm "gamma"/"beta" become weight/bias."""
    state: dict[str, Tensor] = {}
    for key, tensor in raw.items():
        if key.endswith("LayerNorm.gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key[: -len("beta")] + "bias"
        if key in state:
            raise CheckpointError(f"{source}: tensor {key} is stored twice (old and new name)")
        state[key] = tensor
    return state


def from_hf_state_dict(
    raw: dict[str, Tensor], model: Any, prefix: str, source: str = "checkpoint"
) -> dict[str, Tensor]:
    """Validate HF-named tensors against `model` (built on the meta device with the heads to load)
    and return its state dict (decoder tied to the word embedding).

    Raises CheckpointError naming the tensor for missing/unexpected keys, wrong shapes, non-float
    dtypes, NaN/Inf, and tied weights stored twice with different values. Heads the model does not
    have (pooler, NSP, an MLM head the caller left out) and known buffers are ignored.
    """
    state = canonical_names(raw, source)
    mlm = model.mlm_head is not None
    # The decoder bias is tied to cls.predictions.bias in transformers: either name, or both.
    if DECODER_BIAS in state:
        bias = state.pop(DECODER_BIAS)
        if MLM_BIAS not in state:
            state[MLM_BIAS] = bias
        elif not _same(state[MLM_BIAS], bias):
            raise CheckpointError(
                f"{source}: {DECODER_BIAS} differs from {MLM_BIAS}; they must be tied"
            )
    # The decoder weight is tied to the word embeddings: stored once (HF) or twice (old .bin).
    decoder = state.pop(DECODER_WEIGHT, None)

    pairs = key_map(
        model.config,
        prefix=prefix,
        mlm_head=mlm,
        nsp_head=model.nsp_head is not None,
        classifier=model.classifier is not None,
    )
    expected = {k: tuple(v.shape) for k, v in to_hf_state_dict(model, prefix).items()}
    ignorable = {_join(prefix, b) for b in _IGNORED_BUFFERS}

    def is_ignorable(key: str) -> bool:
        if key in ignorable:
            return True
        if model.nsp_head is None and key.startswith((_join(prefix, "pooler."), NSP_PREFIX)):
            return True
        if model.classifier is None and key.startswith(CLASSIFIER_PREFIX):
            return True
        return not mlm and key.startswith(MLM_PREFIX)

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not is_ignorable(k)]
    ignored = [k for k in state if k not in expected and is_ignorable(k)]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing tensors: {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected tensors: {_listed(unexpected)}")
        raise CheckpointError(
            f"{source}: " + "; ".join(problems) + " (does config.json match the weights?)"
        )
    if ignored:
        logger.info("%s: ignoring tensors not used by this model: %s", source, _listed(ignored))
    for key, shape in expected.items():
        _check_tensor(key, state[key], shape, source)
    word_key = pairs[0][1][0]
    if decoder is not None and mlm:
        _check_tensor(DECODER_WEIGHT, decoder, expected[word_key], source)
        if not _same(decoder, state[word_key]):
            raise CheckpointError(
                f"{source}: {DECODER_WEIGHT} differs from {word_key}; this model requires tied "
                "input/output embeddings"
            )

    ours: dict[str, Tensor] = {}
    for our_key, hf_keys in pairs:
        parts = [state[k] for k in hf_keys]
        ours[our_key] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    if mlm:
        ours["mlm_head.decoder.weight"] = ours["embeddings.word.weight"]
    return ours


# ----------------------------------------------------------------------------------------------
# Reading


def find_weights(directory: Path) -> Path | None:
    """The weights file of a directory (safetensors, shard index or .bin, in that order)."""
    for name in (WEIGHTS_NAME, SHARDED_INDEX_NAME, PYTORCH_WEIGHTS_NAME):
        if (directory / name).is_file():
            return directory / name
    return None


def read_weights(
    directory: Path, *, allow_pickle: bool = True, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], str]:
    """(raw HF-named tensors, sha256 of the weights' bytes) of a checkpoint directory.

    The sha256 is that of model.safetensors (of the shards' bytes in name order when sharded, of
    pytorch_model.bin when that is what was read). `allow_pickle=False` refuses a directory whose
    only weights are pytorch_model.bin.
    """
    path = find_weights(directory)
    if path is None:
        raise CheckpointError(
            f"{directory}: no weights file found (looked for {WEIGHTS_NAME}, "
            f"{SHARDED_INDEX_NAME}, {PYTORCH_WEIGHTS_NAME})"
        )
    if path.name == PYTORCH_WEIGHTS_NAME and not allow_pickle:
        raise CheckpointError(
            f"{directory}: no {WEIGHTS_NAME}; the server loads only safetensors (found "
            f"{PYTORCH_WEIGHTS_NAME}; convert it with bert-convert)"
        )
    digest = hashlib.sha256()
    if path.name == WEIGHTS_NAME:
        raw = _read_safetensors(path, digest)
    elif path.name == SHARDED_INDEX_NAME:
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: cannot read the shard index ({e})") from e
        raw = {}
        for shard in shards:
            if Path(shard).name != shard:
                raise CheckpointError(f"{path}: shard {shard!r} is not a file name in {directory}")
            raw.update(_read_safetensors(directory / shard, digest))
    else:
        raw = _read_pytorch_bin(path, map_location, digest)
    if str(map_location) != "cpu":
        raw = {k: v.to(map_location) for k, v in raw.items()}
    return raw, digest.hexdigest()


def _read_safetensors(path: Path, digest: Any) -> dict[str, Tensor]:
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: weights file not found") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the weights ({e.strerror})") from e
    digest.update(data)
    try:
        return load_safetensors_bytes(data)
    except Exception as e:  # SafetensorError: truncated or corrupt bytes
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e


def _read_pytorch_bin(
    path: Path, map_location: str | torch.device, digest: Any
) -> dict[str, Tensor]:
    try:
        digest.update(path.read_bytes())
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for disallowed objects, RuntimeError when truncated
        raise CheckpointError(f"{path}: cannot read PyTorch weights ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is not a named tensor")
    return data
