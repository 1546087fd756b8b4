"""`bench.efficiency.encoder_flops`: the analytic FLOP count behind the efficiency figures."""

from __future__ import annotations

from torch import nn

from bench.efficiency import encoder_flops
from model import BertConfig, BertForMaskedLM


def test_projection_flops_match_the_models_linear_weights():
    """Projections cost 2 FLOPs per weight per token: count the weights of a real encoder."""
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
    )
    model = BertForMaskedLM(config, mlm_head=False)
    weights = sum(m.weight.numel() for m in model.layers.modules() if isinstance(m, nn.Linear))
    batch, seq_len = 4, 16
    attention = 3 * 2 * 2 * batch * seq_len * seq_len * 32  # scores + weighted sum, per layer
    assert encoder_flops(3, 32, 64, batch, seq_len) == 2 * batch * seq_len * weights + attention


def test_bert_base_at_32_by_128():
    # 12 x (2*4096*768*(3*768 + 768 + 2*3072) + 4*32*128*128*768): ~22 GFLOP per sequence.
    assert encoder_flops(12, 768, 3072, 32, 128) == 715_112_054_784
