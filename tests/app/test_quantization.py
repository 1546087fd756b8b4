"""int8 for the encoder (app.quantization): ``Int8Linear`` computes what it claims (per-channel
int8 weights, 8-bit activations with VNNI and 7-bit without, one scale per token), the
SmoothQuant algebra is exact (folded into pre-LN LayerNorms, into v's rows, or applied at run
time), the recipe quantizes what it names and keeps what it keeps, and a tiny random model
served in int8 answers within the gate.

Runs on any x86 CPU (fbgemm's int8 kernels exist with or without VNNI); nothing here measures
speed (bench/study_int8.py does).
"""

from __future__ import annotations

import pytest
import torch
from app_testing import build_checkpoint
from torch import nn

from app import precision as precisions
from app import quantization as q
from app.loading import load_engine
from model import BertConfig, BertForMaskedLM, hardware


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear(n_in: int, n_out: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.normal_(0.0, 0.1)
        lin.bias.normal_(0.0, 0.1)
    return lin


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    return (got - want).norm(dim=-1) / want.norm(dim=-1)  # (N,)


def test_int8_linear_stores_per_channel_int8_weights():
    lin = _linear(64, 48)
    layer = q.Int8Linear(lin.weight, lin.bias)
    values, scales = layer.weight_int8()
    assert values.dtype == torch.int8 and values.shape == (48, 64)
    assert int(values.abs().max()) <= 127
    want_scales = lin.weight.detach().abs().amax(dim=1) / 127
    torch.testing.assert_close(scales, want_scales, rtol=1e-5, atol=0)
    dequantized = values.float() * scales[:, None]
    assert float((dequantized - lin.weight.detach()).abs().max()) <= float(scales.max()) / 2 + 1e-7


def test_per_token_scales_keep_small_rows_accurate():
    """One row of huge activations (a [SEP] after GELU) takes the batch's single scale; with a
    scale per token the other rows keep their own precision."""
    lin = _linear(64, 32)
    torch.manual_seed(1)
    x = torch.randn(16, 64)
    x[3] *= 300.0
    with torch.no_grad():
        want = lin(x)
        batch = q.Int8Linear(lin.weight, lin.bias, per_token=False)(x)
        token = q.Int8Linear(lin.weight, lin.bias, per_token=True)(x.clone())
    small = [i for i in range(16) if i != 3]
    assert float(_relative_error(token, want)[small].max()) < 0.02
    assert float(_relative_error(batch, want)[small].mean()) > 0.1  # the problem it solves
    assert float(_relative_error(token, want)[3]) < 0.02
    # The caller's input is never modified, and empty batches pass through.
    x0 = x.clone()
    q.Int8Linear(lin.weight, lin.bias, per_token=True)(x)
    assert torch.equal(x, x0)
    assert q.Int8Linear(lin.weight, lin.bias, per_token=True)(x[:0]).shape == (0, 32)


@pytest.mark.parametrize(("vnni", "bits"), [(True, 8), (False, 7)])
def test_activation_bits_follow_the_cpu(monkeypatch, vnni, bits):
    """8-bit activations where the CPU has VNNI / AMX (no int16 saturation), 7-bit elsewhere."""
    monkeypatch.setattr(q, "int8_dot_cpu", lambda: vnni)
    assert q.resolve_reduce_range() is (not vnni)
    assert q.DEFAULT_RECIPE.as_dict()["activation_bits"] == bits
    model = _tiny_model("post")
    int8 = q.quantize(model)
    layers = [m for m in int8.modules() if isinstance(m, q.Int8Linear)]
    assert len(layers) == 4 * len(model.layers)
    assert all(m.reduce_range is (not vnni) for m in layers)
    assert f"activation_bits={bits}" in repr(layers[0])
    # A recipe may still pin it either way.
    assert q.resolve_reduce_range(q.Recipe(reduce_range=vnni)) is vnni


def test_int8_dot_cpu_reads_the_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    assert hardware.int8_dot_cpu()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not hardware.int8_dot_cpu()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: None)
    assert not hardware.int8_dot_cpu()


def test_smoothing_scales_split_the_range():
    x_amax = torch.tensor([16.0, 1.0])
    weight = torch.ones(3, 2)
    torch.testing.assert_close(q.smoothing_scales(x_amax, weight, 0.5), torch.tensor([4.0, 1.0]))
    torch.testing.assert_close(q.smoothing_scales(x_amax, weight, 0.0), torch.tensor([1.0, 1.0]))


def _tiny_model(norm_position: str, seed: int = 0) -> BertForMaskedLM:
    cfg = BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        norm_position=norm_position,
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.2, 3.0)  # outlier channels for the smoothing to move
            else:
                p.normal_(0.0, 0.1)
    return model.eval()


class _ExactLinear(nn.Module):
    """Int8Linear's algebra without the rounding: input_scale, then the (smoothed) weight."""

    def __init__(self, weight, bias, *, input_scale=None, **_):
        super().__init__()
        self.weight, self.bias, self.input_scale = weight, bias, input_scale

    def forward(self, x):
        if self.input_scale is not None:
            x = x * self.input_scale
        return nn.functional.linear(x, self.weight, self.bias)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_smoothing_is_exact_where_it_folds_and_where_it_scales(monkeypatch, norm_position):
    """With the rounding taken out, a smoothed model computes what the fp32 one does: 1/s folded
    into a pre-LN LayerNorm, into v's rows (for out), or applied at run time (post-LN, down)."""
    model = _tiny_model(norm_position)
    torch.manual_seed(2)
    ids = torch.randint(5, 97, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    ranges = q.activation_ranges(model, [(ids, mask)])
    assert set(ranges) == {(i, n) for i in range(2) for n in q.MATMULS}
    monkeypatch.setattr(q, "Int8Linear", _ExactLinear)
    recipe = q.Recipe(smooth=q.MATMULS, alpha=0.7)
    smoothed = q.quantize(model, ranges, recipe)
    with torch.inference_mode():
        want = model.encode(ids, attention_mask=mask)
        got = smoothed.encode(ids, attention_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    layer = smoothed.layers[0]
    folded = norm_position == "pre"
    assert (layer.attention.qkv.input_scale is None) is folded
    assert (layer.ffn.up.input_scale is None) is folded
    assert layer.attention.out.input_scale is None  # always folded into v's rows
    assert layer.ffn.down.input_scale is not None  # GELU in between: at run time
    unchanged = torch.equal(layer.attn_norm.weight, model.layers[0].attn_norm.weight)
    assert unchanged is not folded


def test_the_recipe_quantizes_what_it_names_and_keeps_the_rest():
    model = _tiny_model("post")
    int8 = q.quantize(model, None, q.Recipe(keep=("down",), per_token=("up",)))
    for layer, original in zip(int8.layers, model.layers, strict=True):
        assert isinstance(layer.ffn.down, nn.Linear)
        assert torch.equal(layer.ffn.down.weight, original.ffn.down.weight)
        for name in ("qkv", "out", "up"):
            parent, attr = q.matmuls(layer)[name]
            m = getattr(parent, attr)
            assert isinstance(m, q.Int8Linear) and m.per_token is (name == "up")
            assert m.input_scale is None  # no ranges given: nothing smoothed
    assert int8.mlm_head.decoder.weight is int8.embeddings.word.weight
    assert isinstance(model.layers[0].attention.qkv, nn.Linear)  # the fp32 model is untouched
    with pytest.raises(ValueError, match="unknown matmul"):
        q.Recipe(smooth=("ffn",))
    with pytest.raises(ValueError, match="alpha"):
        q.Recipe(alpha=1.5)


def test_int8_on_a_tiny_random_model_answers_within_the_gate(tmp_path):
    """A seeded tiny classifier (hidden 32, two layers) served in int8: every embedding within
    the gate's cosine, retrieval unchanged within a point, every label the same."""
    checkpoint = build_checkpoint(tmp_path / "clf", seed=0, labels=("neg", "pos", "mid"))
    engine = load_engine(checkpoint, max_input_tokens=64, precision="int8")
    assert engine.precision == "int8", engine.precision_report["reason"]
    gate = engine.precision_report["gate"]
    assert gate["min_cosine"] >= precisions.MIN_COSINE
    assert gate["label_agreement"] >= precisions.MIN_LABEL_AGREEMENT
    assert abs(gate["recall_delta"]) <= precisions.MAX_RECALL_DELTA + 1e-9
    assert isinstance(engine.model.layers[-1].ffn.down, q.Int8Linear)
