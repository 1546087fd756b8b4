"""Two CPU processes under torchrun (DDP, gloo) against one process with the same global batch."""

from __future__ import annotations

import torch
from train_testing import cli_args, run_ddp

from model import BertForMaskedLM
from training.pretrain.cli import main
from training.run.metrics import read_metrics


def test_two_process_ddp_matches_one_process_with_accumulation(tmp_path):
    # Dropout off: the two runs draw dropout masks from different RNG streams.
    no_dropout = ["--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0"]
    common = ["--max-steps", "6", "--batch_size", "4", "--save-every", "3", *no_dropout]
    ddp_out = tmp_path / "ddp"
    run_ddp(tmp_path, ddp_out, *common)

    # The same 8 rows per step in one process: batch 4 x 2 accumulation steps.
    single_out = tmp_path / "single"
    assert main(cli_args(tmp_path, single_out, *common, "--grad_accum_steps", "2")) == 0

    ddp = dict(BertForMaskedLM.from_pretrained(ddp_out / "final").named_parameters())
    single = dict(BertForMaskedLM.from_pretrained(single_out / "final").named_parameters())
    for name, p in single.items():
        # Same rows, masks and maths; only the order of float additions differs.
        torch.testing.assert_close(ddp[name], p, atol=2e-5, rtol=1e-4, msg=name)

    # Rank 0 alone wrote: one metrics record per logged step, one state, nothing half-written.
    ddp_steps = [r["step"] for r in read_metrics(ddp_out / "metrics.jsonl") if "train_loss" in r]
    assert ddp_steps == [2, 4, 6]
    state = torch.load(ddp_out / "final" / "training_state.pt", weights_only=False)
    assert state["world_size"] == 2 and state["cursor"] == 6 * 8
    assert sorted(p.name for p in ddp_out.iterdir() if not p.name.startswith("tensor")) == sorted(
        ["best.json", "checkpoint-000003", "final", "latest", "metrics.jsonl", "tokenizer"]
    )
