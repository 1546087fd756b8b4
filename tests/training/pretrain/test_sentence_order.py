"""Sentence-order and next-sentence prediction: the pairs cut from packed rows, and a run that
trains the NSP head, resumes exactly and exports transformers' BertForPreTraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_testing import cli_args

from model import BertForMaskedLM
from training.pretrain.cli import main
from training.pretrain.config import TrainConfig
from training.pretrain.sentence_order import make_pairs
from training.run.options import TrainConfigError

CLS, SEP = 1, 2


def _rows(B: int = 64, T: int = 16) -> np.ndarray:
    body = np.arange(100, 100 + B * (T - 1)).reshape(B, T - 1)  # distinct ids: traceable
    return np.concatenate([np.full((B, 1), CLS), body], axis=1)


@pytest.mark.parametrize("objective", ["sop", "nsp"])
def test_pairs_keep_rows_full_and_label_what_was_done(objective):
    rows = _rows()
    ids, types, labels = make_pairs(rows, np.random.default_rng(0), objective, SEP)
    B, T = rows.shape
    assert ids.shape == types.shape == rows.shape and labels.shape == (B,)
    assert 0.3 < labels.mean() < 0.7  # about half flipped
    for i in range(B):
        seps = np.flatnonzero(ids[i] == SEP)
        assert ids[i, 0] == CLS and len(seps) == 2 and seps[1] == T - 1
        a, b = ids[i, 1 : seps[0]], ids[i, seps[0] + 1 : T - 1]
        assert len(a) >= 3 and len(b) >= 3  # the cut lies in the middle half
        assert (types[i, : seps[0] + 1] == 0).all() and (types[i, seps[0] + 1 :] == 1).all()
        own = set(rows[i, 1 : T - 2].tolist())
        if objective == "sop":
            assert set(a.tolist()) | set(b.tolist()) == own  # the same text, in some order
            in_order = b[0] == a[-1] + 1
            assert in_order == (labels[i] == 0)
        else:
            assert set(a.tolist()) <= own and a[0] == rows[i, 1]  # A is this row's start
            assert (set(b.tolist()) <= own) == (labels[i] == 0)  # B: own continuation or not


def test_pairs_are_a_function_of_the_seed():
    a = make_pairs(_rows(), np.random.default_rng(7), "sop", SEP)
    b = make_pairs(_rows(), np.random.default_rng(7), "sop", SEP)
    c = make_pairs(_rows(), np.random.default_rng(8), "sop", SEP)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="must be one of"):
        make_pairs(_rows(), np.random.default_rng(0), "order", SEP)


def test_sop_needs_packed_rows_and_the_mlm_objective():
    with pytest.raises(TrainConfigError, match="packing"):
        TrainConfig(sop_weight=1.0, packing=False)
    with pytest.raises(TrainConfigError, match="packing"):
        TrainConfig(sop_weight=1.0, mlm_weight=0.0, contrastive_weight=1.0)
    with pytest.raises(TrainConfigError, match="sop_weight"):
        TrainConfig(sop_weight=-1.0)


def test_sop_run_resumes_exactly_and_exports_bert_for_pretraining(tmp_path):
    extra = ["--max-steps", "8", "--sop_weight", "1.0"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(cli_args(tmp_path, straight, *extra)) == 0
    assert main(cli_args(tmp_path, split, *extra, "--stop-after", "4")) == 0
    assert main(cli_args(tmp_path, split, *extra, "--resume")) == 0
    a = BertForMaskedLM.from_pretrained(straight / "final", nsp_head=True).state_dict()
    b = BertForMaskedLM.from_pretrained(split / "final", nsp_head=True).state_dict()
    assert any(k.startswith("nsp_head.") for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name

    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForPreTraining.from_pretrained(straight / "final").eval()
    assert type(hf).__name__ == "BertForPreTraining"
    ours = BertForMaskedLM.from_pretrained(straight / "final", nsp_head=True)
    ids = torch.randint(5, ours.config.vocab_size, (2, 12))
    types = torch.tensor([[0] * 6 + [1] * 6] * 2)
    with torch.no_grad():
        mine = ours(ids, token_type_ids=types)
        theirs = hf(input_ids=ids, token_type_ids=types)
    torch.testing.assert_close(mine.nsp_logits, theirs.seq_relationship_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.logits, theirs.prediction_logits, atol=1e-5, rtol=0)
