"""Rotary position embeddings (RoPE) as RoFormer defines them: the angles, the rotation of queries
and keys, and the sinusoid table RoFormer checkpoints store.

RoFormer's layout (transformers.RoFormer*): channel pair i is (2i, 2i+1) and turns by
t / 10000^(2i / hs) at position t. Used by `model/bert.py` (attention) and `model/checkpoint.py`
(the table written into rotary checkpoints so that transformers finds every tensor it expects).

Deliberately not here: other RoPE variants (half-split pairs as in GPT-NeoX/LLaMA, scaled bases).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def rotary_angles(length: int, head_size: int) -> Tensor:
    """RoPE's angles (T, hs/2), float64: pair i at position t turns by t / 10000^(2i / hs).

    RoFormer's layout (transformers.RoFormer*): pair i is channels (2i, 2i+1). Float64 as
    transformers computes its table, so both round the same float32 values.
    """
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    return torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (T, hs/2)


@functools.cache
def _rotary_factors(length: int, head_size: int, device: torch.device) -> Tensor:
    """e^(i * angle) (T, hs/2) complex64, cached per length and device."""
    angles = rotary_angles(length, head_size)  # (T, hs/2) float64
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(device)


def apply_rotary(x: Tensor) -> Tensor:
    """Rotate each channel pair of x (B, nh, T, hs) by its position's angle (RoPE).

    The pair (2i, 2i+1) read as the complex number x_2i + i x_2i+1 is multiplied by e^(i angle):
    x_2i cos - x_2i+1 sin and x_2i+1 cos + x_2i sin, RoFormer's rotation, in one complex
    multiply (about 3x faster than gathering the pairs; computed in float32 under autocast).
    """
    factors = _rotary_factors(x.shape[-2], x.shape[-1], x.device)  # (T, hs/2)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, nh, T, hs/2)
    return torch.view_as_real(pairs * factors).flatten(-2).to(x.dtype)  # (B, nh, T, hs)


def roformer_sinusoids(positions: int, head_size: int) -> Tensor:
    """RoFormer's `embed_positions` table (T, hs): sines in the first half, cosines in the
    second, as transformers builds it (float64 angles, stored as float32)."""
    angles = rotary_angles(positions, head_size)  # (T, hs/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()
