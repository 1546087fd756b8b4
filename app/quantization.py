"""Int8 for BERT-class encoders on CPU: which matrix multiplies run in int8, and how, so that
the answers stay within the accuracy gate (``app.precision``) while the matrices run at the int8
rate (VNNI: ~3.5x the fp32 rate on the shapes of a MiniLM or a BERT-base).

Where the error of plain dynamic int8 comes from (docs/precision.md has the measurements, per
matmul and per layer, on the real all-MiniLM-L6-v2): mostly activations quantized with one scale
for a whole batch (plain per-channel int8: min cosine 0.974 on the gate's probes; the weights'
rounding alone: 0.998).

* The inputs of ``qkv`` and FFN ``up`` are LayerNorm outputs with a few outlier *channels*
  (99, 63, 223 in every layer of all-MiniLM, 15-19x the median channel): one scale for the tensor
  leaves the other channels a handful of levels. SmoothQuant (Xiao et al., 2023) divides each
  input channel by ``s = amax_x^alpha / amax_w^(1-alpha)`` and multiplies the weight's matching
  column by ``s``: the product is unchanged, the activation is flat, and the weight (quantized
  per output channel) absorbs the range. ``amax_x`` is calibrated at load on a few hundred
  tokens of bundled text (``app/probes.json``). In a pre-LN model the division folds into the
  LayerNorm's weight and bias (free); in a post-LN model (BERT, MiniLM) that LayerNorm's output
  is also the residual stream, so the division is one elementwise multiply before quantizing.
* The input of FFN ``down`` follows GELU: a few *tokens* ([CLS], [SEP], punctuation) carry
  activations ~10x the others, which take the batch's scale. It gets one scale per token: each
  row is divided by its absolute maximum before the kernel quantizes the batch, and the output
  row multiplied back (exact in real arithmetic: the kernel is linear in each row). Smoothing
  cannot fold here (GELU is in between) and, measured, does not help.
* Per-token scales help the other three as well, less dramatically: with them, the error left
  on all-MiniLM is the weights' own rounding and spread thinly over every matmul (keeping any
  single one in fp32 moves the min cosine by about 0.001), so every matmul of every layer is int8.

Kernels: ``torch.ops.quantized.linear_dynamic`` on weights prepacked for torch's ``x86``
engine (fbgemm), with ``reduce_range=False`` where the CPU has VNNI / AMX
(``model.hardware.int8_dot_cpu``): torch.ao's dynamic Linear hard-codes ``reduce_range=True``
(7-bit activations), which is needed only on CPUs without VNNI, whose ``vpmaddubsw`` would
saturate int16 sums of 8-bit products; without VNNI this module keeps 7 bits too, and the gate
decides whether that is accurate enough. ``onednn`` kernels are 5-10% faster on a repeated
shape but build a primitive for every new number of tokens (each serving batch's), which costs
more than that, so ``x86`` it is.

Deliberately not here: static activation scales (calibrated per-tensor ranges lose to dynamic
ones on every model measured), int8 attention (softmax and the score products stay fp32: short
sequences spend their attention time in per-call overhead, not in arithmetic), int8 heads or
embeddings (the MLM decoder runs at [MASK] rows only), GPUs, and the decision whether int8
serves (``app.precision`` gates it, ``app.loading`` chooses).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from model.hardware import int8_dot_cpu

MATMULS = ("qkv", "out", "up", "down")  # the four matrix multiplies of every encoder layer
# Kernel engines in order of preference: x86 (fbgemm, or onednn where torch finds it faster),
# then the engines of other builds. qnnpack (ARM) has no per-channel dynamic kernels worth it.
ENGINES = ("x86", "fbgemm", "onednn")
_TINY = 1e-12  # floor of a row's range: an all-zero row stays zero instead of dividing by 0


@dataclass(frozen=True)
class Recipe:
    """How an encoder's matrix multiplies are quantized (the default is what serves)."""

    # Matmuls whose input channels are smoothed (SmoothQuant): their inputs have outlier channels.
    smooth: tuple[str, ...] = ("qkv", "up")
    # SmoothQuant's migration strength: 0 leaves activations as they are, 1 moves all of their
    # range into the weights. 0.5 (the paper's default for BERT-sized models) measured best.
    alpha: float = 0.5
    # Matmuls whose activations get one scale per token instead of one per batch: all four.
    # down needs it most (GELU's outlier tokens); qkv / up / out gain less but still 2x in
    # 1 - min cosine on all-MiniLM, for ~10% of the int8 forward's time.
    per_token: tuple[str, ...] = MATMULS
    # Matmuls left in fp32 (none: every one of them passes the gate in int8 with the above).
    keep: tuple[str, ...] = ()
    engine: str = "x86"  # torch.backends.quantized engine the weights are packed for
    # None: 8-bit activations where the CPU has VNNI / AMX, 7-bit elsewhere (see module doc).
    reduce_range: bool | None = None

    def __post_init__(self) -> None:
        for name in (*self.smooth, *self.per_token, *self.keep):
            if name not in MATMULS:
                raise ValueError(f"unknown matmul {name!r}; the encoder's are {MATMULS}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "smooth": list(self.smooth),
            "alpha": self.alpha,
            "per_token": list(self.per_token),
            "keep_fp32": list(self.keep),
            "engine": self.engine,
            "activation_bits": 7 if resolve_reduce_range(self) else 8,
        }


DEFAULT_RECIPE = Recipe()


def resolve_reduce_range(recipe: Recipe = DEFAULT_RECIPE) -> bool:
    """Whether activations are kept to 7 bits: as the recipe says, else where the CPU lacks VNNI."""
    return (not int8_dot_cpu()) if recipe.reduce_range is None else recipe.reduce_range


def kernel_engine(preferred: str = "x86") -> str | None:
    """The quantized engine to pack weights for: ``preferred`` if this torch build has it, else
    the first of ``ENGINES`` it has (None: no int8 CPU kernels)."""
    supported = set(torch.backends.quantized.supported_engines)
    for name in (preferred, *ENGINES):
        if name in supported:
            return name
    return None


@contextlib.contextmanager
def _packing_engine(name: str) -> Iterator[None]:
    """Pack for ``name``: prepacking reads torch's global engine. Running does not (the packed
    object carries its kernels), so the global is restored at once and only touched if it
    differs."""
    previous = torch.backends.quantized.engine
    if previous == name:
        yield
        return
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


class Int8Linear(nn.Module):
    """A Linear with int8 weights (one scale per output channel) and int8 activations quantized
    at run time: fp32 in, fp32 out.

    ``input_scale`` (in_features,) multiplies the input first (SmoothQuant's 1/s where it could
    not be folded into a LayerNorm; the weight's columns were multiplied by s before packing).
    ``per_token``: each row is divided by its own scale (its absolute maximum when ``floor`` is
    -1) before the kernel quantizes the batch with one range, always [floor, 1], and the output
    row multiplied back, so a row of large activations no longer coarsens the others and a
    row's answer does not depend on the rows beside it. Example, floor -1: rows
    [[100, -50], [0.1, 0.2]] reach the kernel as [[1, -0.5], [0.5, 1]] with row scales
    [100, 0.2].
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        *,
        input_scale: Tensor | None = None,
        per_token: bool = False,
        floor: float = -1.0,
        reduce_range: bool = False,
        engine: str = "x86",
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.per_token, self.reduce_range, self.engine = per_token, reduce_range, engine
        weight = weight.detach().float()
        # Symmetric per output channel: scale = max |w| / 127, zero point 0.
        scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(_TINY).double()  # (out,)
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # Quantized tensor constructors are marked deprecated in favour of torchao, which has
            # no eager CPU dynamic-int8 kernel as fast as fbgemm's; the kernels themselves stay.
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        fp32_bias = None if bias is None else bias.detach().float().clone()
        with _packing_engine(engine):
            # Per-token outputs are rescaled before the bias is added, so the kernel gets none.
            self._packed = torch.ops.quantized.linear_prepack(
                qweight, None if per_token else fp32_bias
            )
        self.register_buffer("bias", fp32_bias if per_token else None)
        self.register_buffer("input_scale", input_scale)
        # The range anchor (per_token): every row is scaled into [floor, 1] (by the larger of
        # its max and min / floor), and a row holding 1 and ``floor`` is appended to every batch,
        # so the kernel's one range per batch is always [floor, 1]. Without it the range was the
        # batch's own min and max, and a row's answer moved (by ~1e-2 in a reranker's logit)
        # with the rows it happened to share a batch with. The floor is -1, but after an
        # activation bounded below (GELU >= -0.17) it is that bound over the row's max: a range
        # wider than the rows need costs resolution.
        self.floor = max(min(floor, 0.0), -1.0)
        anchor = torch.zeros(self.in_features)
        anchor[:2] = torch.tensor([1.0, self.floor])
        self.register_buffer("anchor", anchor, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.per_token:
            if self.input_scale is not None:
                x = x * self.input_scale  # (..., in)
            return torch.ops.quantized.linear_dynamic(x, self._packed, self.reduce_range)
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)  # (n, in)
        n = x.shape[0]
        batch = x.new_empty((n + 1, self.in_features))  # the scaled rows, then the anchor
        scaled = batch[:n]
        if self.input_scale is not None:
            x = torch.mul(x, self.input_scale, out=scaled)
        # The scale that puts the row in [floor, 1]: max |x| for floor -1, from two reductions
        # (x.abs() would allocate a copy of x); its max for floor 0 (a ReLU's output).
        rows = x.amax(dim=-1, keepdim=True)  # (n, 1)
        if self.floor < 0:
            rows = torch.maximum(rows, x.amin(dim=-1, keepdim=True).div_(self.floor))
        rows = rows.clamp_(min=_TINY)
        torch.div(x, rows, out=scaled)  # never into the caller's x
        batch[n] = self.anchor
        y = torch.ops.quantized.linear_dynamic(batch, self._packed, self.reduce_range)[:n]
        # y * rows (+ bias, in one pass): (n, out)
        y = y.mul_(rows) if self.bias is None else torch.addcmul(self.bias, y, rows, out=y)
        return y.view(*lead, self.out_features)

    def weight_int8(self) -> tuple[Tensor, Tensor]:
        """The packed weight as (int8 values (out, in), per-channel scales (out,))."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"per_token={self.per_token}, smoothed={self.input_scale is not None}, "
            f"activation_bits={7 if self.reduce_range else 8}, engine={self.engine}"
        )


def matmuls(layer: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Where each of ``MATMULS`` lives in a ``model.bert.Layer``: (parent module, attribute)."""
    return {
        "qkv": (layer.attention, "qkv"),
        "out": (layer.attention, "out"),
        "up": (layer.ffn, "up"),
        "down": (layer.ffn, "down"),
    }


Ranges = dict[tuple[int, str], Tensor]  # (layer index, matmul) -> max |input| per channel


def activation_ranges(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], names: Sequence[str] = MATMULS
) -> Ranges:
    """Max |input| per input channel of each matmul in ``names``, over the tokens of
    ``batches`` ((ids, attention mask) pairs) run through the fp32 ``model``'s encoder.

    The encoder packs real tokens before its token-wise work, so padding never counts.
    """
    ranges: Ranges = {}
    hooks = []

    def record(key: tuple[int, str]):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            amax = inputs[0].detach().abs().flatten(0, -2).amax(dim=0)  # (in,)
            ranges[key] = amax if key not in ranges else torch.maximum(ranges[key], amax)

        return hook

    for i, layer in enumerate(model.layers):
        for name, (parent, attr) in matmuls(layer).items():
            if name in names:
                hooks.append(getattr(parent, attr).register_forward_pre_hook(record((i, name))))
    try:
        with torch.inference_mode():
            for ids, mask in batches:
                model.encode(ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    return ranges


def smoothing_scales(x_amax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """SmoothQuant's per-input-channel s = amax_x^alpha / amax_w^(1 - alpha), clamped away
    from 0; the input is divided by s and the weight's columns multiplied by it.

    Example: amax_x [16, 1], column amax_w [1, 1], alpha 0.5 -> s [4, 1]: the activation ranges
    become [4, 1] and the weight's [4, 1], each factor a square root of the product's range.
    """
    w_amax = weight.detach().abs().amax(dim=0).float()  # (in,)
    s = x_amax.float().clamp_min(1e-5).pow(alpha) / w_amax.clamp_min(1e-5).pow(1.0 - alpha)
    return s.clamp_min(1e-5)  # (in,)


def quantize(
    model: nn.Module, ranges: Ranges | None = None, recipe: Recipe = DEFAULT_RECIPE
) -> nn.Module:
    """A copy of the fp32 ``model`` whose encoder matmuls run in int8 as ``recipe`` says.

    ``ranges`` (``activation_ranges``) are needed for smoothing; without them nothing is
    smoothed. The embeddings, LayerNorms, attention, GELU and every head stay fp32 (the MLM
    decoder keeps sharing the word embeddings' matrix).
    """
    engine = kernel_engine(recipe.engine)
    if engine is None:
        raise RuntimeError("this torch build has no int8 CPU kernels (fbgemm / x86 / onednn)")
    reduce_range = resolve_reduce_range(recipe)
    smooth = recipe.smooth if ranges else ()
    pre_norm = model.config.norm_position == "pre"
    # down reads the FFN activation's output, bounded below (GELU's minimum is -0.17, ReLU's 0):
    # its rows are scaled into [that bound, 1], a finer range than [-1, 1] (see Int8Linear).
    grid = torch.linspace(-30.0, 30.0, 60_001)
    floors = {"down": min(float(model.layers[0].ffn.act(grid).min()), 0.0)} if model.layers else {}
    out = copy.deepcopy(model)
    with torch.no_grad():
        for i, layer in enumerate(out.layers):
            where = matmuls(layer)
            linears: dict[str, nn.Linear] = {n: getattr(p, a) for n, (p, a) in where.items()}
            weights = {n: lin.weight.detach().float().clone() for n, lin in linears.items()}
            biases = {
                n: None if lin.bias is None else lin.bias.detach().float().clone()
                for n, lin in linears.items()
            }
            input_scales: dict[str, Tensor | None] = dict.fromkeys(MATMULS)
            for name in smooth:
                if name in recipe.keep:
                    continue
                s = smoothing_scales(ranges[(i, name)], weights[name], recipe.alpha)  # (in,)
                weights[name] *= s  # (out, in): columns scaled
                norm = {"qkv": layer.attn_norm, "up": layer.ffn_norm}.get(name)
                if pre_norm and norm is not None:
                    # The LayerNorm feeds this matmul alone: fold 1/s into its affine part.
                    norm.weight.div_(s)
                    norm.bias.div_(s)
                elif name == "out":
                    # out's input is softmax-weighted sums of v: scale v's rows (and bias) by 1/s.
                    H = weights["qkv"].shape[1]
                    weights["qkv"][2 * H :] /= s[:, None]
                    if biases["qkv"] is not None:
                        biases["qkv"][2 * H :] /= s
                else:  # a post-LN residual stream or GELU's output: divide at run time
                    input_scales[name] = 1.0 / s
            for name, (parent, attr) in where.items():
                if name in recipe.keep:
                    linears[name].weight.copy_(weights[name])  # a folded v keeps its rows
                    if biases[name] is not None:
                        linears[name].bias.copy_(biases[name])
                    continue
                setattr(
                    parent,
                    attr,
                    Int8Linear(
                        weights[name],
                        biases[name],
                        input_scale=input_scales[name],
                        per_token=name in recipe.per_token,
                        floor=floors.get(name, -1.0),
                        reduce_range=reduce_range,
                        engine=engine,
                    ),
                )
    return out
