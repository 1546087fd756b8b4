"""Checkpoint directories: HF-compatible config.json + model.safetensors, read and written safely.

The directory format is the contract with training and serving:
    config.json        `BertConfig.to_dict()` (HF keys + `norm_position`, model_type "bert",
                       architectures ["BertForMaskedLM"], dtype)
    model.safetensors  tensors under transformers' `BertForMaskedLM` names (query/key/value kept
                       separate: our fused qkv is split on save and concatenated on load; the tied
                       decoder weight is stored once, as the word embedding)
    vocab.txt, tokenizer_config.json   written by the tokenizer, not here.

Loading also accepts a HuggingFace BERT directory as is: model.safetensors, a sharded
model.safetensors.index.json, or pytorch_model.bin (read with `torch.load(weights_only=True)`, never
unpickling code); old "gamma"/"beta" LayerNorm names; the decoder weight/bias stored once or twice.
Heads we do not use (pooler, NSP unless asked) are ignored; anything else missing, unexpected,
misshapen, non-float or non-finite is a `CheckpointError` naming the tensor.

Writes are atomic: both files go to temporary names in the target directory and are renamed over
the old ones only once both are complete, so a failure mid-write leaves the previous checkpoint
intact. Deliberately not handled: TensorFlow/Flax weights, sharded writes, pre-LN export to
transformers (it cannot represent it; convert.py refuses).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from model.bert import BertForMaskedLM, rotary_angles
from model.config import BertConfig
from model.errors import CheckpointError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SHARDED_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_WEIGHTS_NAME = "pytorch_model.bin"

_DECODER_WEIGHT = "cls.predictions.decoder.weight"
_DECODER_BIAS = "cls.predictions.decoder.bias"
_MLM_BIAS = "cls.predictions.bias"
# RoFormer's fixed sinusoidal table: written so transformers finds every tensor it expects,
# ignored on load (rotary angles are computed, not stored).
_ROFORMER_SINUSOIDS = "roformer.encoder.embed_positions.weight"
_MAX_LISTED = 8  # how many key names an error message lists before "... and N more"


# ----------------------------------------------------------------------------------------------
# Key mapping between our module names and transformers' BertForMaskedLM names


def base_prefix(config: BertConfig) -> str:
    """The encoder's name in transformers: "bert" (BertForMaskedLM) or "roformer" (rotary)."""
    return "roformer" if config.position_embedding_type == "rotary" else "bert"


def word_embeddings_key(config: BertConfig) -> str:
    return f"{base_prefix(config)}.embeddings.word_embeddings.weight"


def key_map(config: BertConfig, nsp_head: bool = False) -> list[tuple[str, tuple[str, ...]]]:
    """(our state-dict key, HF key(s)) pairs; three HF keys are concatenated along dim 0.

    Names are those of transformers' BertForMaskedLM, or RoFormerForMaskedLM for rotary
    positions (the same modules under "roformer.", without a position table). The tied decoder
    weight is absent: it is the word embedding. For pre-LN, the per-layer
    LayerNorms keep the HF names of the post-LN ones they replace (attention.output.LayerNorm is
    the norm before attention, output.LayerNorm the one before the FFN) and the final norm is
    `bert.encoder.LayerNorm`, a name transformers does not know.
    """
    pairs: list[tuple[str, tuple[str, ...]]] = []

    def add(ours: str, *hf: str) -> None:
        for suffix in ("weight", "bias"):
            pairs.append((f"{ours}.{suffix}", tuple(f"{h}.{suffix}" for h in hf)))

    base = base_prefix(config)
    pairs.append(("embeddings.word.weight", (word_embeddings_key(config),)))
    if config.position_embedding_type == "absolute":
        pairs.append(
            ("embeddings.position.weight", (f"{base}.embeddings.position_embeddings.weight",))
        )
    pairs.append(
        ("embeddings.token_type.weight", (f"{base}.embeddings.token_type_embeddings.weight",))
    )
    add("embeddings.norm", f"{base}.embeddings.LayerNorm")
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers.{i}", f"{base}.encoder.layer.{i}"
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
        add("final_norm", f"{base}.encoder.LayerNorm")
    add("mlm_head.dense", "cls.predictions.transform.dense")
    add("mlm_head.norm", "cls.predictions.transform.LayerNorm")
    pairs.append(("mlm_head.bias", (_MLM_BIAS,)))
    if nsp_head:
        add("nsp_head.pooler", f"{base}.pooler.dense")
        add("nsp_head.classifier", "cls.seq_relationship")
    return pairs


def to_hf_state_dict(model: BertForMaskedLM) -> dict[str, Tensor]:
    """Our parameters under HF names (views of the parameters; qkv split into three)."""
    state = model.state_dict()
    out: dict[str, Tensor] = {}
    for ours, hf_keys in key_map(model.config, model.nsp_head is not None):
        parts = state[ours].chunk(len(hf_keys), dim=0) if len(hf_keys) > 1 else (state[ours],)
        out.update(zip(hf_keys, parts, strict=True))
    return out


def expected_hf_shapes(config: BertConfig, nsp_head: bool = False) -> dict[str, tuple[int, ...]]:
    """HF key -> shape that a checkpoint for `config` must have (computed on the meta device)."""
    with torch.device("meta"):
        model = BertForMaskedLM(config, nsp_head=nsp_head)
    return {k: tuple(v.shape) for k, v in to_hf_state_dict(model).items()}


def _is_ignorable(key: str, nsp_head: bool) -> bool:
    """Keys a HF checkpoint may carry that we do not need: buffers, pooler and NSP head."""
    if key in (
        "bert.embeddings.position_ids",
        "bert.embeddings.token_type_ids",
        _ROFORMER_SINUSOIDS,
    ):
        return True
    return not nsp_head and key.startswith(
        ("bert.pooler.", "roformer.pooler.", "cls.seq_relationship.")
    )


def roformer_sinusoids(positions: int, head_size: int) -> Tensor:
    """RoFormer's `embed_positions` table (T, hs): sines in the first half, cosines in the
    second, as transformers builds it (float64 angles, stored as float32)."""
    angles = rotary_angles(positions, head_size)  # (T, hs/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def _check_tensor(name: str, tensor: Tensor, shape: tuple[int, ...], source: str) -> None:
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


def from_hf_state_dict(
    raw: dict[str, Tensor], config: BertConfig, nsp_head: bool = False, source: str = "checkpoint"
) -> dict[str, Tensor]:
    """Validate HF-named tensors against `config` and return our state dict (decoder tied).

    Raises CheckpointError naming the tensor for missing/unexpected keys, wrong shapes, non-float
    dtypes, NaN/Inf, and tied weights stored twice with different values.
    """
    state: dict[str, Tensor] = {}
    for key, tensor in raw.items():
        # TF-era checkpoints name LayerNorm parameters gamma/beta.
        if key.endswith("LayerNorm.gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key[: -len("beta")] + "bias"
        if key in state:
            raise CheckpointError(f"{source}: tensor {key} is stored twice (old and new name)")
        state[key] = tensor

    # The decoder bias is tied to cls.predictions.bias in transformers: either name, or both.
    if _DECODER_BIAS in state:
        bias = state.pop(_DECODER_BIAS)
        if _MLM_BIAS not in state:
            state[_MLM_BIAS] = bias
        elif not _same(state[_MLM_BIAS], bias):
            raise CheckpointError(
                f"{source}: {_DECODER_BIAS} differs from {_MLM_BIAS}; they must be tied"
            )
    # The decoder weight is tied to the word embeddings: stored once (HF) or twice (old .bin).
    decoder = state.pop(_DECODER_WEIGHT, None)

    word_key = word_embeddings_key(config)
    expected = expected_hf_shapes(config, nsp_head)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not _is_ignorable(k, nsp_head)]
    ignored = [k for k in state if k not in expected and _is_ignorable(k, nsp_head)]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing tensors: {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected tensors: {_listed(unexpected)}")
        hint = " (does config.json match the weights?)"
        if missing and all(k.startswith("cls.predictions.") for k in missing):
            hint = " (the checkpoint has no MLM head; is it a BertModel checkpoint?)"
        elif any(k.startswith(("embeddings.", "encoder.")) for k in unexpected):
            hint = " (names lack the 'bert.' prefix: a BertModel checkpoint, without MLM head?)"
        raise CheckpointError(f"{source}: " + "; ".join(problems) + hint)
    if ignored:
        logger.info("%s: ignoring tensors not used by this model: %s", source, _listed(ignored))
    for key, shape in expected.items():
        _check_tensor(key, state[key], shape, source)
    if decoder is not None:
        _check_tensor(_DECODER_WEIGHT, decoder, expected[word_key], source)
        if not _same(decoder, state[word_key]):
            raise CheckpointError(
                f"{source}: {_DECODER_WEIGHT} differs from {word_key}; this model "
                "requires tied input/output embeddings"
            )

    ours: dict[str, Tensor] = {}
    for our_key, hf_keys in key_map(config, nsp_head):
        parts = [state[k] for k in hf_keys]
        ours[our_key] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    ours["mlm_head.decoder.weight"] = ours["embeddings.word.weight"]
    return ours


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.to(b.dtype), b))


# ----------------------------------------------------------------------------------------------
# Reading


def read_weights(directory: Path, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The raw HF-named tensors of a checkpoint directory, from the first weights file found."""
    device = str(map_location)
    single = directory / WEIGHTS_NAME
    if single.is_file():
        return _read_safetensors(single, device)
    index = directory / SHARDED_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: cannot read the shard index ({e})") from e
        out: dict[str, Tensor] = {}
        for shard in shards:
            out.update(_read_safetensors(directory / shard, device))
        return out
    pickled = directory / PYTORCH_WEIGHTS_NAME
    if pickled.is_file():
        return _read_pytorch_bin(pickled, map_location)
    raise CheckpointError(
        f"{directory}: no weights file found (looked for {WEIGHTS_NAME}, {SHARDED_INDEX_NAME}, "
        f"{PYTORCH_WEIGHTS_NAME})"
    )


def _read_safetensors(path: Path, device: str) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device=device)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: weights file not found") from e
    except Exception as e:  # SafetensorError, OSError: truncated or corrupt file
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e


def _read_pytorch_bin(path: Path, map_location: str | torch.device) -> dict[str, Tensor]:
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for disallowed objects, RuntimeError when truncated
        raise CheckpointError(f"{path}: cannot read PyTorch weights ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is not a named tensor")
    return data


def load_pretrained(
    cls: type[BertForMaskedLM],
    directory: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    nsp_head: bool = False,
) -> BertForMaskedLM:
    """Build `cls` from a checkpoint directory; see the module docstring for what is accepted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    config = BertConfig.from_json_file(directory / CONFIG_NAME)
    raw = read_weights(directory, map_location)
    state = from_hf_state_dict(raw, config, nsp_head, source=str(directory))
    dtype = dtype or torch.float32
    state = {k: v.to(dtype) for k, v in state.items()}
    # Built on the meta device and filled by assignment: no time spent on a random init that the
    # checkpoint overwrites, and the tensors stay on map_location.
    with torch.device("meta"):
        model = cls(config, nsp_head=nsp_head)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()  # assign=True made two Parameters of the tied tensor; make it one again
    logger.info(
        "loaded %s (%s, %d parameters)", directory, config.norm_position, model.num_parameters()
    )
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Writing


def save_pretrained(model: BertForMaskedLM, directory: str | Path) -> None:
    """Write config.json and model.safetensors into `directory` (created if needed), atomically.

    Refuses (CheckpointError) to write non-finite weights, so a diverged run cannot overwrite a
    good checkpoint.
    """
    directory = Path(directory)
    tensors: dict[str, Tensor] = {}
    for key, tensor in to_hf_state_dict(model).items():
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"refusing to save: tensor {key} contains NaN or Inf values")
        # clone(): safetensors refuses tensors sharing storage (the q/k/v views of qkv).
        tensors[key] = tensor.detach().to("cpu").contiguous().clone()
    if model.config.position_embedding_type == "rotary":
        c = model.config
        tensors[_ROFORMER_SINUSOIDS] = roformer_sinusoids(c.max_position_embeddings, c.head_size)
    config = model.config.to_dict()
    config["dtype"] = str(model.dtype).removeprefix("torch.")
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"{directory}: cannot create checkpoint directory ({e})") from e
    atomic_write_files(
        {
            directory / WEIGHTS_NAME: lambda p: save_file(
                tensors, str(p), metadata={"format": "pt"}
            ),
            directory / CONFIG_NAME: lambda p: p.write_text(config_text, encoding="utf-8"),
        }
    )
    logger.info("saved %s", directory)


def atomic_write_files(writers: dict[Path, Callable[[Path], object]]) -> None:
    """Write each file to a temporary name beside it, then rename all of them into place.

    Nothing is renamed until every file has been written and flushed to disk, so an error (or a
    crash) while writing leaves the previous files untouched; temporaries are removed on error.
    """
    temps = {path: path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}") for path in writers}
    try:
        for path, write in writers.items():
            write(temps[path])
            _fsync(temps[path])
        for path, tmp in temps.items():
            os.replace(tmp, path)
        for parent in {p.parent for p in writers}:
            _fsync(parent)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint files ({e})") from e
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file (or a directory entry, where the OS allows it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # directories cannot be opened on some platforms; best effort
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
