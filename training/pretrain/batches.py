"""Pretraining micro-batches: rows at a data position -> (optional sentence pairs) -> masks.

`MLMBatches.batch(start)` gives the `batch_size` rows at global position `start` of the run's
`RowOrder`, rebuilt as sentence pairs when `train.sop_weight > 0`
(`training/pretrain/sentence_order.py`), then masked (`training/data/masking.py`). Every draw is
seeded by the position, so a row gets a new mask (and a new cut) each time it comes round again
and the same ones after a resume.
Deliberately not here: contrastive batches (training/pretrain/contrastive.py) and the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.data.masking import MaskingSpec, mask_batch
from training.pretrain.config import TrainConfig
from training.pretrain.sentence_order import make_pairs

__all__ = ["MLMBatch", "MLMBatches", "masking_spec"]

_MASK_STREAM = 0x4D41534B  # "MASK": keeps mask seeds apart from any other use of the run seed
_PAIR_STREAM = 0x50414952  # "PAIR": the sentence-pair cuts, apart from the masks


def masking_spec(tokenizer: Any, cfg: TrainConfig) -> MaskingSpec:
    return MaskingSpec.from_vocab(
        tokenizer.vocab,
        tokenizer.special_ids,
        tokenizer.mask_token_id,
        mlm_probability=cfg.mlm_probability,
        mask_token_prob=cfg.mask_token_prob,
        random_token_prob=cfg.random_token_prob,
        whole_word=cfg.whole_word_masking,
    )


@dataclass
class MLMBatch:
    input_ids: torch.Tensor  # (B, T) masked
    attention_mask: torch.Tensor | None  # (B, T); None for packed rows
    labels: torch.Tensor  # (B, T), -100 where not masked
    token_type_ids: torch.Tensor | None = None  # (B, T), sentence pairs only
    sentence_labels: torch.Tensor | None = None  # (B,), sentence pairs only


class MLMBatches:
    """Builds the masked micro-batches of a run from its data, order and settings."""

    def __init__(
        self, data: Any, order: Any, tokenizer: Any, cfg: TrainConfig, device: torch.device
    ) -> None:
        self.data, self.order, self.cfg, self.device = data, order, cfg, device
        self.spec = masking_spec(tokenizer, cfg)
        self.sep_id = tokenizer.sep_token_id

    def batch(self, start: int) -> MLMBatch:
        """Masked inputs and labels of the `batch_size` rows at global position `start`."""
        cfg = self.cfg
        ids, attn = self.data.rows(self.order.rows(start, cfg.batch_size))
        types = sentence = None
        if cfg.sop_weight > 0:
            pair_rng = np.random.default_rng([cfg.seed, _PAIR_STREAM, start])
            ids, types, sentence = make_pairs(ids, pair_rng, cfg.sentence_objective, self.sep_id)
        rng = np.random.default_rng([cfg.seed, _MASK_STREAM, start])
        inp, labels = mask_batch(ids, self.spec, rng, attn)
        return MLMBatch(
            input_ids=self._tensor(inp),
            attention_mask=None if attn is None else self._tensor(attn),
            labels=self._tensor(labels),
            token_type_ids=None if types is None else self._tensor(types),
            sentence_labels=None if sentence is None else self._tensor(sentence),
        )

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device, non_blocking=True)
