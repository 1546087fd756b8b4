"""The contrastive stage: InfoNCE's minimum, learning on a few pairs, the SimCSE dropout guard,
MLM-only runs unchanged bit for bit, exact resume, init_from, and the pooling a checkpoint
records (config.json, transformers, the server's default)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from app_testing import build_checkpoint, serve_config
from fastapi.testclient import TestClient
from train_testing import DATA, TINY_MODEL, cli_args, tiny_tokenizer

from app.main import create_app
from model import BertConfig, BertForMaskedLM, ConfigError, pool
from training.data.pairs import gloss_files
from training.pretrain.cli import main
from training.pretrain.config import TrainConfig, load_run_config
from training.pretrain.contrastive import (
    ContrastiveData,
    TextTable,
    check_objective,
    contrastive_loss,
    info_nce,
    tokenize_texts,
)
from training.run.checkpointing import CheckpointManager
from training.run.metrics import read_metrics
from training.run.options import TrainConfigError

ADMIN_TOKEN = "contrastive-admin-token-0123456789"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def params(directory) -> dict[str, torch.Tensor]:
    return dict(BertForMaskedLM.from_pretrained(directory).named_parameters())


def tiny_model(seed: int = 0, dropout: float = 0.1) -> BertForMaskedLM:
    torch.manual_seed(seed)
    cfg = {**TINY_MODEL, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    return BertForMaskedLM(BertConfig(vocab_size=tiny_tokenizer().vocab_size, **cfg))


def pair_data(pairs: list[tuple[str, str]], batch_size: int) -> ContrastiveData:
    tok = tiny_tokenizer()
    unique = list(dict.fromkeys(t for p in pairs for t in p))
    index = np.array([(unique.index(a), unique.index(b)) for a, b in pairs])
    return ContrastiveData(
        mode="pairs",
        batch_size=batch_size,
        max_length=32,
        seed=0,
        cls_id=tok.cls_token_id,
        sep_id=tok.sep_token_id,
        pad_id=tok.pad_token_id,
        texts=tokenize_texts(unique, tok, None),
        pairs=index,
    )


def first_pairs(n: int) -> list[tuple[str, str]]:
    out = []
    with (DATA / "wordnet.train.txt").open(encoding="utf-8") as f:
        lines = [next(f) for _ in range(400)]
    from training.data.pairs import parse_gloss

    for line in lines:
        g = parse_gloss(line)
        if g is not None and g.examples and g.definition not in {d for _, d in out}:
            out.append((g.examples[0], g.definition))
        if len(out) == n:
            return out
    raise AssertionError("not enough glosses with examples")


# --- the loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.5])
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_of_identical_orthogonal_rows_is_the_closed_form_minimum(temperature, symmetric):
    B, H = 4, 8
    scale = torch.tensor(
        [[0.5], [2.0], [3.0], [7.0]], dtype=torch.float64
    )  # norms must not matter (cosines)
    a = torch.eye(H, dtype=torch.float64)[:B] * scale  # float64: the bound is ~6e-9 at t=0.05
    loss = info_nce(a, a.clone(), temperature, symmetric=symmetric)
    bound = math.log(1 + (B - 1) * math.exp(-1 / temperature))
    assert loss.item() == pytest.approx(bound, rel=1e-5)

    # Tilting each b_i away from a_i into unused dimensions leaves every negative cosine at 0
    # and lowers the positive one to cos(theta): the loss rises to exactly its closed form.
    theta = 0.3
    eye = torch.eye(H, dtype=torch.float64)
    b = math.cos(theta) * eye[:B] + math.sin(theta) * eye[B : 2 * B]
    tilted = info_nce(a, b, temperature, symmetric=symmetric)
    expected = math.log(1 + (B - 1) * math.exp(-math.cos(theta) / temperature))
    assert tilted.item() == pytest.approx(expected, rel=1e-6)
    assert tilted.item() > loss.item()


def test_info_nce_refuses_bad_shapes_and_temperatures():
    with pytest.raises(ValueError, match="at least 2"):
        info_nce(torch.ones(1, 4), torch.ones(1, 4), 0.05)
    with pytest.raises(ValueError, match=r"\(B, H\)"):
        info_nce(torch.ones(2, 4), torch.ones(3, 4), 0.05)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.ones(2, 4), torch.ones(2, 4), 0.0)


def _bound(a: torch.Tensor, b: torch.Tensor, t: float) -> float:
    """Row i's loss is >= log(1 + sum_{j != i} exp((cos(a_i, b_j) - 1) / t)) (a cosine is <= 1)."""
    s = F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T
    off = ~torch.eye(len(s), dtype=torch.bool)
    return float(torch.log1p(((s - 1) / t).exp().masked_fill(~off, 0).sum(1)).mean())


def test_identical_encodings_reach_the_bound_and_dropout_views_stay_above_it():
    data = pair_data(first_pairs(6), batch_size=6)
    ids, attn = (torch.from_numpy(x) for x in data.batch({"pairs": 0}))
    ids = torch.cat([ids[:6], ids[:6]])  # a = b: the examples twice
    attn = torch.cat([attn[:6], attn[:6]])
    model, t = tiny_model(dropout=0.1), 0.05

    model.eval()  # no dropout: the two copies encode identically
    with torch.no_grad():
        loss = contrastive_loss(model, ids, attn, pooling="mean", temperature=t, symmetric=True)
        a = pool(model.encode(ids[:6], attn[:6]), attn[:6], "mean")
    assert loss.item() == pytest.approx(_bound(a, a, t), rel=1e-5)

    model.train()  # dropout: two different views of each sentence, strictly above their bound
    with torch.no_grad():
        torch.manual_seed(1)
        loss = contrastive_loss(model, ids, attn, pooling="mean", temperature=t, symmetric=False)
        torch.manual_seed(1)  # the same dropout masks again, to read the two views
        hidden = model(ids, attention_mask=attn, prediction_mask=torch.zeros_like(ids).bool())
        a, b = pool(hidden.last_hidden_state, attn, "mean").chunk(2)
    assert not torch.equal(a, b)
    assert loss.item() == pytest.approx(info_nce(a, b, t).item(), rel=1e-6)
    assert loss.item() > _bound(a, b, t) + 1e-4


def test_the_loss_falls_when_training_a_tiny_model_on_a_few_pairs():
    data = pair_data(first_pairs(8), batch_size=8)
    ids, attn = (torch.from_numpy(x) for x in data.batch({"pairs": 0}))
    model = tiny_model(dropout=0.0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = contrastive_loss(model, ids, attn, pooling="mean", temperature=0.05, symmetric=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > math.log(8) * 0.5  # an untrained model barely tells the pairs apart
    assert np.mean(losses[-5:]) < 0.2 * losses[0]
    with torch.no_grad():  # and each example now finds its own definition
        emb = pool(model.encode(ids, attn), attn, "mean")
        a, b = F.normalize(emb, dim=-1).chunk(2)
    assert torch.equal((a @ b.T).argmax(1), torch.arange(8))


# --- data ----------------------------------------------------------------------------------------


def test_pair_batches_are_padded_per_batch_and_truncated_to_max_length():
    pairs = first_pairs(5)
    data = pair_data(pairs, batch_size=5)
    data.max_length = 6
    ids, attn = data.batch({"pairs": 0})
    tok = tiny_tokenizer()
    assert ids.shape == attn.shape and ids.shape[0] == 10 and ids.shape[1] <= 6
    assert (ids[:, 0] == tok.cls_token_id).all()
    lengths = attn.sum(1)
    assert (ids[np.arange(10), lengths - 1] == tok.sep_token_id).all()
    assert (ids[attn == 0] == tok.pad_token_id).all()
    # Row a_i and row b_i are an (example, definition) pair: same order on both sides.
    order = data.orders["pairs"].rows(0, 5)
    first = tok.encode(pairs[order[0]][1], add_special_tokens=False).ids[:4]
    assert ids[5, 1 : 1 + len(first)].tolist() == first


def test_gloss_files_skip_prose(tmp_path):
    prose = tmp_path / "docs.txt"
    prose.write_text("Some text here.\nNote: this line looks like a gloss. It is not.\nMore.\n")
    assert gloss_files([DATA / "wordnet.valid.txt", prose]) == [str(DATA / "wordnet.valid.txt")]


def test_simcse_table_shares_the_mlm_corpus_tokens(tmp_path):
    from training.data.corpus import load_corpus

    f = tmp_path / "c.txt"
    f.write_text("the cat sat .\n\nthe dog ran far .\n")
    corpora = load_corpus([f, f], tiny_tokenizer(), None)
    table = TextTable.from_corpora(corpora)
    assert len(table) == 4
    tok = tiny_tokenizer()
    doc = table.tokens[table.offsets[3] : table.offsets[4]].tolist()
    assert doc == tok.encode("the dog ran far .", add_special_tokens=False).ids


# --- configuration ------------------------------------------------------------------------------


def test_config_fields_are_validated_with_messages_naming_the_value():
    cfg = TrainConfig()
    assert (cfg.mlm_weight, cfg.contrastive_weight, cfg.pooling) == (1.0, 0.0, "mean")
    for bad, match in (
        ({"mlm_weight": -1}, r"mlm_weight=-1\.0"),
        ({"contrastive_weight": float("nan")}, "contrastive_weight=nan"),
        ({"mlm_weight": 0}, "nothing to train"),
        ({"contrastive_data": "nli"}, "contrastive_data='nli'"),
        ({"pooling": "median"}, r"train\.pooling='median' is invalid: must be one of \['mean'"),
        ({"temperature": 0}, r"temperature=0\.0"),
        ({"contrastive_batch_size": 1}, "contrastive_batch_size=1"),
        ({"contrastive_max_length": 2}, "contrastive_max_length=2"),
        ({"contrastive_tau": 1}, "unknown train setting"),
    ):
        with pytest.raises(TrainConfigError, match=match):
            TrainConfig.from_dict(bad)
    # The poolings are the model's (model.POOLINGS), the ones the server and bert-eval know.
    assert TrainConfig(pooling="max").pooling == "max"
    # Flat flags reach the train section (pooling is not a model setting there).
    _, cfg = load_run_config(
        None, [("pooling", "cls"), ("init-from", "ckpt"), ("temperature", "1e-1")]
    )
    assert (cfg.pooling, cfg.init_from, cfg.temperature) == ("cls", "ckpt", 0.1)


def test_simcse_without_dropout_is_refused(tmp_path, capsys):
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = BertConfig(vocab_size=600, **{**TINY_MODEL, **no_dropout})
    for data in ("simcse", "both"):
        with pytest.raises(TrainConfigError, match="needs dropout"):
            check_objective(config, TrainConfig(contrastive_weight=1, contrastive_data=data))
    check_objective(config, TrainConfig(contrastive_weight=1, contrastive_data="pairs"))
    check_objective(config, TrainConfig(contrastive_data="simcse"))  # off: nothing to check
    with pytest.raises(TrainConfigError, match="contrastive_max_length=65 exceeds"):
        check_objective(config, TrainConfig(contrastive_weight=1, contrastive_max_length=65))

    args = cli_args(tmp_path, tmp_path / "run", "--max-steps", "2", "--contrastive_weight", "1")
    args += ["--contrastive_data", "simcse", "--hidden_dropout_prob", "0"]
    args += ["--attention_probs_dropout_prob", "0"]
    assert main(args) == 2
    assert "needs dropout" in capsys.readouterr().err
    assert not (tmp_path / "run" / "latest").exists()


# --- the training loop ---------------------------------------------------------------------------


def test_contrastive_weight_zero_trains_bit_identically_to_a_run_without_the_new_keys(tmp_path):
    common = ["--max-steps", "6", "--eval_every", "3", "--grad_accum_steps", "2"]
    plain = tmp_path / "plain"
    assert main(cli_args(tmp_path, plain, *common)) == 0
    off = tmp_path / "off"
    keys = ["--contrastive_weight", "0", "--mlm_weight", "1", "--contrastive_data", "simcse"]
    keys += ["--temperature", "0.2", "--contrastive_batch_size", "4", "--pooling", "mean"]
    assert main(cli_args(tmp_path, off, *common, *keys)) == 0

    a, b = params(plain / "final"), params(off / "final")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa = torch.load(plain / "final" / "training_state.pt", weights_only=False)
    sb = torch.load(off / "final" / "training_state.pt", weights_only=False)
    for x, y in zip(
        sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(x["exp_avg"], y["exp_avg"]) and torch.equal(
            x["exp_avg_sq"], y["exp_avg_sq"]
        )
    assert sb["contrastive_cursor"] == {}
    ra, rb = read_metrics(plain / "metrics.jsonl"), read_metrics(off / "metrics.jsonl")
    assert [r.get("train_loss") for r in ra] == [r.get("train_loss") for r in rb]
    assert not any("train_contrastive_loss" in r for r in rb)


def test_joint_training_logs_both_parts_and_records_cost_and_pooling(tmp_path):
    out = tmp_path / "joint"
    extra = ["--max-steps", "6", "--eval_every", "3", "--contrastive_weight", "0.5"]
    extra += ["--contrastive_batch_size", "8", "--pooling", "cls"]
    assert main(cli_args(tmp_path, out, *extra)) == 0
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "train_loss" in r]
    for r in train:  # the logged loss is the weighted sum of the logged parts
        assert r["train_loss"] == pytest.approx(
            r["train_mlm_loss"] + 0.5 * r["train_contrastive_loss"], rel=1e-5
        )
    valid = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in valid] == [3, 6]
    for r in valid:
        assert 0 <= r["valid_retrieval_recall_at_1"] <= r["valid_retrieval_recall_at_10"] <= 1
        assert 0 < r["valid_retrieval_mrr"] <= 1
    final = out / "final"
    assert json.loads((final / "config.json").read_text())["pooling"] == "cls"
    run = yaml.safe_load((final / "training_config.yaml").read_text())
    assert run["train"]["pooling"] == "cls" and "pooling" not in run["model"]
    assert run["run"]["step"] == 6 and 0 < run["run"]["train_time_s"] <= run["run"]["elapsed_s"]
    state = torch.load(final / "training_state.pt", weights_only=False)
    assert state["contrastive_cursor"] == {"pairs": 6 * 8}
    load_run_config(final / "training_config.yaml")  # still usable as --config


def test_exact_resume_with_the_contrastive_stage_on(tmp_path):
    # "both": two data streams; dropout on (train_testing): the torch RNG must resume too.
    extra = ["--max-steps", "8", "--grad_accum_steps", "2", "--contrastive_weight", "1"]
    extra += ["--contrastive_data", "both", "--contrastive_batch_size", "6"]
    straight = tmp_path / "straight"
    assert main(cli_args(tmp_path, straight, *extra)) == 0
    split = tmp_path / "split"
    assert main(cli_args(tmp_path, split, *extra, "--stop-after", "3")) == 0
    assert CheckpointManager(split, writer=False).latest().name == "checkpoint-000003"
    mid = torch.load(split / "checkpoint-000003" / "training_state.pt", weights_only=False)
    assert mid["contrastive_cursor"] == {"pairs": 3 * 2 * 3, "simcse": 3 * 2 * 3}
    assert main(cli_args(tmp_path, split, *extra, "--resume")) == 0

    a, b = params(straight / "final"), params(split / "final")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa = torch.load(straight / "final" / "training_state.pt", weights_only=False)
    sb = torch.load(split / "final" / "training_state.pt", weights_only=False)
    assert sa["contrastive_cursor"] == sb["contrastive_cursor"] == {"pairs": 48, "simcse": 48}
    for x, y in zip(
        sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])
    # Logged windows (log_every 2) that do not straddle the interruption at step 3 agree.
    logged = [
        {
            r["step"]: (r["train_mlm_loss"], r["train_contrastive_loss"])
            for r in read_metrics(d / "metrics.jsonl")
            if "train_loss" in r and r["step"] != 4
        }
        for d in (straight, split)
    ]
    assert sorted(logged[0]) == [2, 6, 8] and logged[0] == logged[1]


def test_a_contrastive_only_stage_skips_mlm_and_selects_by_retrieval(tmp_path):
    out = tmp_path / "nce"
    extra = ["--max-steps", "4", "--save-every", "2", "--eval_every", "2"]
    extra += ["--mlm_weight", "0", "--contrastive_weight", "1", "--contrastive_batch_size", "8"]
    assert main(cli_args(tmp_path, out, *extra)) == 0
    train = [r for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    assert all("train_mlm_loss" not in r and "train_accuracy" not in r for r in train)
    assert all(r["train_loss"] == pytest.approx(r["train_contrastive_loss"]) for r in train)
    state = torch.load(out / "final" / "training_state.pt", weights_only=False)
    assert state["cursor"] == 0  # no MLM rows consumed
    best = json.loads((out / "best.json").read_text())
    valid = {r["step"]: r for r in read_metrics(out / "metrics.jsonl") if "valid_loss" in r}
    assert best["valid_loss"] == pytest.approx(1 - valid[best["step"]]["valid_retrieval_mrr"])


def test_init_from_starts_from_the_checkpoint_and_refuses_mismatches(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(cli_args(tmp_path, first, "--max-steps", "4")) == 0
    stage1 = first / "final"
    before = params(stage1)

    second = tmp_path / "second"
    args = cli_args(tmp_path, second, "--max-steps", "2", valid=False)
    i = args.index("--vocab")
    del args[i : i + 2]  # the tokenizer comes from the checkpoint
    extra = ["--init_from", str(stage1), "--contrastive_weight", "1", "--lr", "1e-9"]
    extra += ["--contrastive_batch_size", "4", "--pooling", "cls", "--hidden_dropout_prob", "0.2"]
    assert main([*args, *extra]) == 0
    after = params(second / "final")
    for name, p in before.items():  # lr 1e-9: two steps cannot move a weight by more
        assert (after[name] - p).abs().max() < 1e-6, name
    fresh = tiny_model(seed=0)
    assert max((fresh.state_dict()[n] - p).abs().max() for n, p in before.items()) > 0.01
    state = torch.load(second / "final" / "training_state.pt", weights_only=False)
    assert state["step"] == 2  # a fresh schedule and optimizer, not stage 1's
    assert all(s["step"].item() == 2 for s in state["optimizer"]["state"].values())
    config = json.loads((second / "final" / "config.json").read_text())
    assert config["pooling"] == "cls" and config["hidden_dropout_prob"] == 0.2
    assert (second / "final" / "vocab.txt").read_text() == (stage1 / "vocab.txt").read_text()

    def refused(*flags: str, keep_vocab: bool = False) -> str:
        out = tmp_path / f"refused{len(list(tmp_path.iterdir()))}"
        argv = cli_args(tmp_path, out, "--max-steps", "2", valid=False)
        if not keep_vocab:
            j = argv.index("--vocab")
            del argv[j : j + 2]
        capsys.readouterr()
        assert main([*argv, "--contrastive_weight", "1", *flags]) == 2
        assert not (out / "latest").exists()
        return capsys.readouterr().err

    err = refused("--init_from", str(stage1), "--hidden_size", "64")
    assert "model.hidden_size=64 does not match" in err and "hidden_size=32" in err
    other_vocab = tmp_path / "other_vocab"
    from app_testing import tiny_tokenizer as other_tokenizer

    other_tokenizer().save_pretrained(other_vocab)
    args = cli_args(tmp_path, tmp_path / "x", valid=False)
    args[args.index("--vocab") + 1] = str(other_vocab)
    capsys.readouterr()
    assert main([*args, "--max-steps", "2", "--init_from", str(stage1)]) == 2
    assert "is not the vocabulary of train.init_from" in capsys.readouterr().err
    assert "is not a checkpoint directory" in refused("--init_from", str(tmp_path / "nowhere"))


# --- pooling in the checkpoint and the server ---------------------------------------------------


def test_pooling_round_trips_through_config_json_and_transformers_still_opens_it(tmp_path):
    cfg = BertConfig(vocab_size=tiny_tokenizer().vocab_size, pooling="cls", **TINY_MODEL)
    torch.manual_seed(0)
    model = BertForMaskedLM(cfg).eval()
    model.save_pretrained(tmp_path / "ckpt")
    data = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert data["pooling"] == "cls" and data["norm_position"] == "post"
    assert BertForMaskedLM.from_pretrained(tmp_path / "ckpt").config.pooling == "cls"

    transformers = pytest.importorskip("transformers")
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ckpt").eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)
    # A HF directory written by transformers keeps the key; one without it means mean.
    hf.save_pretrained(tmp_path / "hf")
    assert BertConfig.from_json_file(tmp_path / "hf" / "config.json").pooling == "cls"
    del data["pooling"]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(data))
    assert BertConfig.from_json_file(tmp_path / "ckpt" / "config.json").pooling == "mean"
    with pytest.raises(ConfigError, match=r"pooling must be one of .*, got 'median'"):
        BertConfig.from_dict({**data, "pooling": "median"})


def _with_pooling(directory, pooling: str | None):
    path = directory / "config.json"
    data = json.loads(path.read_text())
    data.pop("pooling", None)
    if pooling is not None:
        data["pooling"] = pooling
    path.write_text(json.dumps(data))
    return directory


def test_the_server_embeds_with_the_checkpoints_pooling_unless_asked_otherwise(tmp_path):
    models = tmp_path / "models"
    _with_pooling(build_checkpoint(models / "cls", seed=1), "cls")
    shutil.copytree(models / "cls", models / "mean")  # same weights: only the pooling differs
    _with_pooling(models / "mean", None)  # an older checkpoint: no pooling recorded
    token = tmp_path / "token"
    token.write_text(ADMIN_TOKEN)
    config = serve_config(models / "cls", models_root=models, admin_token_file=token)
    texts = ["a dog is an animal .", "the river bank"]

    def vectors(client, **body):
        return torch.tensor(client.post("/embed", json={"inputs": texts, **body}).json())

    with TestClient(create_app(config)) as client:
        cls, mean = vectors(client, pooling="cls"), vectors(client, pooling="mean")
        assert not torch.allclose(cls, mean, atol=1e-3)
        assert torch.equal(vectors(client), cls)
        assert torch.equal(vectors(client, pooling=None), cls)
        openai = client.post("/v1/embeddings", json={"input": texts}).json()
        assert torch.equal(torch.tensor([d["embedding"] for d in openai["data"]]), cls)
        assert client.get("/info").json()["model"]["config"]["pooling"] == "cls"
        schema = client.get("/openapi.json").json()["components"]["schemas"]["EmbedRequest"]
        assert "trained with" in schema["properties"]["pooling"]["description"]

        r = client.post(
            "/admin/reload",
            json={"checkpoint": "mean"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status_code == 200, r.text
        assert torch.equal(vectors(client), mean)  # the new checkpoint's default applies
        openai = client.post("/v1/embeddings", json={"input": texts}).json()
        assert torch.equal(torch.tensor([d["embedding"] for d in openai["data"]]), mean)
        assert torch.equal(vectors(client, pooling="cls"), cls)  # a request still overrides


@pytest.mark.long
def test_two_process_ddp_with_the_contrastive_stage_matches_one_process(tmp_path):
    """Each rank contrasts its own micro-batch: two DDP processes equal one process with
    accumulation 2 (same pairs per micro-batch, same maths), MLM and InfoNCE together."""
    from train_testing import run_ddp

    no_dropout = ["--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0"]
    common = ["--max-steps", "4", "--batch_size", "4", "--save-every", "2", *no_dropout]
    common += ["--contrastive_weight", "1", "--contrastive_batch_size", "4"]
    ddp_out = tmp_path / "ddp"
    run_ddp(tmp_path, ddp_out, *common)
    single_out = tmp_path / "single"
    assert main(cli_args(tmp_path, single_out, *common, "--grad_accum_steps", "2")) == 0

    ddp, single = params(ddp_out / "final"), params(single_out / "final")
    for name, p in single.items():
        torch.testing.assert_close(ddp[name], p, atol=2e-5, rtol=1e-4, msg=name)
    state = torch.load(ddp_out / "final" / "training_state.pt", weights_only=False)
    assert state["contrastive_cursor"] == {"pairs": 4 * 2 * 4}
