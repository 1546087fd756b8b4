"""Retrieval evaluation: gloss pairs, leak-free training pairs, metrics, TF-IDF, embeddings, CLI.

Metric and TF-IDF values are checked against numbers worked out by hand (and, for ties, against
an exhaustive average over every tie-breaking order); the leak tests run on hand-made files and
on the bundled train/valid split. `bert-eval --task retrieval` embeds as the server does: its
vectors equal `/embed`'s on sentence-transformers directories with cls and max pooling.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from app_testing import build_checkpoint, serve_config
from fastapi.testclient import TestClient

from app.main import create_app
from model import BertForMaskedLM, ModelError
from tokenization import WordPieceTokenizer
from training.data.pairs import (
    example_definition_pairs,
    parse_gloss,
    retrieval_set,
    split_sentences,
    training_pairs,
)
from training.evaluation.cli import main
from training.evaluation.retrieval import (
    CheckpointEmbedder,
    checkpoint_pooling,
    embed_texts,
    evaluate_retrieval,
    retrieval_metrics,
    tfidf_retrieval,
    tfidf_scores,
)

DATA = Path(__file__).resolve().parents[3] / "data"


def _key(text: str) -> str:
    return " ".join(text.lower().split())


# ------------------------------------------------------------------------------------ pairs


def test_sentence_split_keeps_abbreviations_and_initials():
    text = (
        "a unit of the U.S. Army, e.g. Delta Force, led by J. Smith. "
        "He served in the U.K. Navy. Is it true? Yes!"
    )
    assert split_sentences(text) == [
        "a unit of the U.S. Army, e.g. Delta Force, led by J. Smith.",
        "He served in the U.K. Navy.",
        "Is it true?",
        "Yes!",
    ]


def test_parse_gloss_definition_then_examples():
    g = parse_gloss(
        "dog, domestic dog: a canine kept in the U.S. Army, i.e. Rex. The dog barked. Dr. Who ran.\n"
    )
    assert g is not None
    assert g.lemmas == "dog, domestic dog"
    assert g.definition == "a canine kept in the U.S. Army, i.e. Rex."
    assert g.examples == ("The dog barked.", "Dr. Who ran.")


def test_lines_without_examples_or_not_glosses_give_no_pairs(tmp_path):
    f = tmp_path / "mixed.txt"
    f.write_text(
        "\n".join(
            [
                "accomplishment, achievement: the action of accomplishing something.",  # no example
                "Return the value of x. It is never None.",  # no ': '
                "* item: a bullet. Another sentence.",  # not a lemma list
                "x = f(a): b. C is here.",  # not a lemma list
                "",
                "lemma:",  # nothing after the colon
                "going, sledding: advancing toward a goal. Persuading him was easy going.",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    assert example_definition_pairs([f]) == [
        ("Persuading him was easy going.", "advancing toward a goal.")
    ]
    rset = retrieval_set([f])
    # The gloss without an example is not a candidate: nothing could ever retrieve it.
    assert rset.candidates == ["advancing toward a goal."]
    assert rset.queries == ["Persuading him was easy going."]
    assert rset.targets == [0]


def test_retrieval_set_merges_identical_definitions(tmp_path):
    f = tmp_path / "g.txt"
    f.write_text(
        "a: the first. A one.\nb: the second. B two. B three.\nc: the first. C four.\n",
        encoding="utf-8",
    )
    rset = retrieval_set([f])
    assert rset.candidates == ["the first.", "the second."]
    assert rset.queries == ["A one.", "B two.", "B three.", "C four."]
    assert rset.targets == [0, 1, 1, 0]


def test_training_pairs_drop_anything_shared_with_the_holdout(tmp_path):
    valid = tmp_path / "valid.txt"
    valid.write_text(
        "alpha: the first letter of the Greek alphabet. Alpha comes before beta.\n",
        encoding="utf-8",
    )
    train = tmp_path / "train.txt"
    train.write_text(
        "\n".join(
            [
                # Shares the definition with the valid gloss (different case and spacing).
                "alef: The first letter of the  Greek alphabet. Alef is written so.",
                # Shares an example with the valid gloss.
                "beta: the second letter. Alpha comes before   BETA. Beta is second.",
                "gamma: the third letter. Gamma follows beta.",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    pairs = training_pairs([train], [valid])
    # "alef" goes whole (its definition is held out); "beta" loses only the pair whose example is.
    assert pairs == [
        ("Beta is second.", "the second letter."),
        ("Gamma follows beta.", "the third letter."),
    ]
    held = {"the first letter of the greek alphabet.", "alpha comes before beta."}
    assert all(_key(e) not in held and _key(d) not in held for e, d in pairs)
    # Without a holdout every pair is kept (the filter is what removed them).
    assert len(training_pairs([train])) == 4


@pytest.fixture(scope="module")
def valid_set():
    return retrieval_set([DATA / "wordnet.valid.txt"])


def test_valid_retrieval_set_size(valid_set):
    assert len(valid_set.queries) == 1965
    assert len(valid_set.candidates) == 1330
    assert len(set(valid_set.candidates)) == 1330
    assert max(valid_set.targets) == 1329


def test_no_valid_text_reaches_the_training_pairs(valid_set):
    train = [DATA / "wordnet.train.txt"]
    held = {_key(t) for t in (*valid_set.queries, *valid_set.candidates)}
    raw = example_definition_pairs(train)
    # The bundled split does share sentences between glosses: the check below has teeth.
    assert any(_key(e) in held or _key(d) in held for e, d in raw)
    pairs = training_pairs(train, [DATA / "wordnet.valid.txt"])
    assert len(pairs) > 40_000
    assert not [p for p in pairs if _key(p[0]) in held or _key(p[1]) in held]


# ---------------------------------------------------------------------------------- metrics


def test_metrics_on_a_toy_matrix_with_ties_and_a_zero_row():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.3, 0.2],  # target 0 first: rank 1
            [0.5, 0.7, 0.5, 0.5],  # target 0: one above, two tied -> ranks 2..4
            [0.0, 0.0, 0.0, 0.0],  # no signal: target 3 anywhere in 1..4
            [0.8, 0.6, 0.4, 0.2],  # target 3 last: rank 4
        ]
    )
    m = retrieval_metrics(scores, [0, 0, 3, 3], ks=(1, 2, 3, 10))
    # recall@k per query: q0 1; q1 clamp((k-1)/3); q2 k/4; q3 0 for k < 4.
    assert m["recall@1"] == pytest.approx((1 + 0 + 1 / 4 + 0) / 4)
    assert m["recall@2"] == pytest.approx((1 + 1 / 3 + 2 / 4 + 0) / 4)
    assert m["recall@3"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 0) / 4)
    assert m["recall@10"] == pytest.approx(1.0)
    rr = [1.0, (1 / 2 + 1 / 3 + 1 / 4) / 3, (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, 1 / 4]
    assert m["mrr"] == pytest.approx(sum(rr) / 4)
    assert m["mrr"] == pytest.approx(307 / 576)
    assert (m["queries"], m["candidates"]) == (4, 4)


def _brute_force(scores: torch.Tensor, targets: list[int], ks) -> dict[str, float]:
    """Average over every tie-breaking order: rank by (score desc, position in the order)."""
    Q, C = scores.shape
    totals = dict.fromkeys([*(f"recall@{k}" for k in ks), "mrr"], 0.0)
    perms = list(itertools.permutations(range(C)))
    for q in range(Q):
        for perm in perms:
            order = sorted(range(C), key=lambda c, p=perm: (-float(scores[q, c]), p[c]))
            rank = order.index(targets[q]) + 1
            for k in ks:
                totals[f"recall@{k}"] += float(rank <= k)
            totals["mrr"] += 1 / rank
    return {k: v / (Q * len(perms)) for k, v in totals.items()}


def test_tie_handling_is_the_expectation_over_random_tie_breaks():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (12, 5), generator=gen).float()  # values 0..2: many ties
    targets = torch.randint(0, 5, (12,), generator=gen).tolist()
    ks = (1, 2, 3)
    got = retrieval_metrics(scores, targets, ks)
    for name, value in _brute_force(scores, targets, ks).items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize(
    ("scores", "targets", "message"),
    [
        (torch.zeros(2, 3), [0], "targets for 2 queries"),
        (torch.zeros(2, 3), [0, 3], "targets must lie"),
        (torch.tensor([[0.1, float("nan")]]), [0], "NaN"),
        (torch.zeros(3), [0], "matrix"),
        (torch.zeros(0, 3), [], "at least one query"),
    ],
)
def test_metrics_reject_bad_input(scores, targets, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(scores, targets)


# ----------------------------------------------------------------------------------- TF-IDF


def test_tfidf_cosines_equal_hand_computed_values():
    queries = ["The cat sat; the CAT!", "Dogs bark."]
    candidates = ["the cat", "a dog barks loudly", "cat, cat"]
    s = tfidf_scores(queries, candidates)
    # N = 5 texts. df: the 2, cat 3, sat 1 (every other word 1). idf = ln(6 / (1 + df)) + 1.
    i1, i2, i3 = math.log(3) + 1, math.log(2) + 1, math.log(1.5) + 1
    q0_norm = math.sqrt((2 * i2) ** 2 + (2 * i3) ** 2 + i1**2)  # the x2, cat x2, sat x1
    expected = torch.tensor(
        [
            [
                (2 * i2 * i2 + 2 * i3 * i3) / (q0_norm * math.sqrt(i2**2 + i3**2)),
                0.0,  # no shared word
                2 * i3 / q0_norm,  # "cat, cat" normalises to the unit vector of "cat"
            ],
            [0.0, 0.0, 0.0],  # "dogs"/"bark" are not "dog"/"barks": an all-zero row
        ],
        dtype=torch.float64,
    )
    assert s.shape == (2, 3)
    assert torch.allclose(s, expected, atol=1e-12)


def test_tfidf_baseline_counts_a_zero_row_as_a_random_guess(tmp_path):
    f = tmp_path / "g.txt"
    f.write_text(
        "cat: a small feline animal. The cat purred.\n"
        "dog: a loyal canine animal. Loyal to the end.\n"
        "owl: a nocturnal bird. Hooting owls.\n",
        encoding="utf-8",
    )
    m = tfidf_retrieval(retrieval_set([f]), ks=(1,))
    # Only "Loyal to the end." shares a word with a definition (its own); the two other queries
    # share none with any candidate, so each is a 1-in-3 guess, neither a hit nor a miss.
    assert m["recall@1"] == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)


# ------------------------------------------------------------------------ embeddings and CLI


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt"), max_positions=64)


@pytest.fixture(scope="module")
def gloss_file(tmp_path_factory) -> Path:
    lines = (DATA / "wordnet.valid.txt").read_text(encoding="utf-8").splitlines()[:80]
    path = tmp_path_factory.mktemp("gloss") / "glosses.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_embed_texts_normalised_ordered_and_batch_independent(tiny_ckpt, one_torch_thread):
    model = BertForMaskedLM.from_pretrained(tiny_ckpt)
    tok = WordPieceTokenizer.from_pretrained(tiny_ckpt)
    texts = ["a short one.", "a considerably longer sentence about dogs and cats.", "", "x y"]
    model.train()  # embed_texts must switch dropout off and then restore this mode
    one = embed_texts(model, tok, texts, batch_size=1)
    many = embed_texts(model, tok, texts, batch_size=64)
    assert model.training
    assert one.shape == (4, model.config.hidden_size)
    assert torch.allclose(one.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(one, many, atol=1e-5)
    model.eval()
    ids = torch.tensor([tok.encode(texts[1]).ids])
    direct = torch.nn.functional.normalize(model.embed(ids, pooling="cls"), dim=-1)
    assert torch.allclose(embed_texts(model, tok, texts[1:2], pooling="cls"), direct, atol=1e-5)


def test_embed_texts_truncates_to_max_length(tiny_ckpt, one_torch_thread):
    model = BertForMaskedLM.from_pretrained(tiny_ckpt)
    tok = WordPieceTokenizer.from_pretrained(tiny_ckpt)
    long_text = " ".join(["the dog runs"] * 100)  # ~300 tokens, the model takes 64 positions
    cut = tok.decode(tok.encode(long_text, max_length=10, truncation=True).ids[1:-1])
    got = embed_texts(model, tok, [long_text, cut], max_length=10)
    assert torch.allclose(got[0], got[1], atol=1e-5)
    full = embed_texts(model, tok, [long_text])  # capped at the model's 64 positions, no error
    assert full.shape == (1, model.config.hidden_size)
    with pytest.raises(ValueError, match="pooling"):
        embed_texts(model, tok, ["x"], pooling="bogus")


def _run_cli(args: list[str], capsys) -> tuple[int, dict | None, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


@pytest.mark.parametrize("pooling", [None, "cls"])
def test_cli_retrieval_matches_a_direct_call(
    tiny_ckpt, gloss_file, capsys, one_torch_thread, pooling
):
    args = ["--task", "retrieval", "--checkpoint", str(tiny_ckpt), "--corpus", str(gloss_file)]
    rc, out, err = _run_cli([*args, *(["--pooling", pooling] if pooling else [])], capsys)
    assert rc == 0, err
    expected_pooling = pooling or "mean"  # the tiny checkpoint records none
    assert out["task"] == "retrieval"
    assert out["pooling"] == expected_pooling
    rset = retrieval_set([gloss_file])
    assert (out["queries"], out["candidates"]) == (len(rset.queries), len(rset.candidates))
    assert set(out["ours"]) == set(out["tfidf"]) == {"recall@1", "recall@10", "mrr"}

    model = BertForMaskedLM.from_pretrained(tiny_ckpt)
    tok = WordPieceTokenizer.from_pretrained(tiny_ckpt)
    ours = evaluate_retrieval(model, tok, rset, pooling=expected_pooling)
    tfidf = tfidf_retrieval(rset)
    for name in ("recall@1", "recall@10", "mrr"):
        assert out["ours"][name] == pytest.approx(ours[name], abs=1e-9)
        assert out["tfidf"][name] == pytest.approx(tfidf[name], abs=1e-12)
    assert out["ratio_to_tfidf"]["recall@1"] == pytest.approx(ours["recall@1"] / tfidf["recall@1"])


def test_cli_retrieval_without_gloss_pairs_exits_2_naming_the_file(tiny_ckpt, tmp_path, capsys):
    prose = tmp_path / "prose.txt"
    prose.write_text("Plain prose without glosses. Another sentence.\nno: examples here.\n")
    args = ["--task", "retrieval", "--checkpoint", str(tiny_ckpt), "--corpus", str(prose)]
    rc, _, err = _run_cli(args, capsys)
    assert rc == 2
    assert str(prose) in err and "no example/definition pairs" in err


def test_checkpoint_pooling_is_the_one_loaders(tiny_ckpt, tmp_path):
    assert checkpoint_pooling(tiny_ckpt) == "mean"  # config.json records none: the default
    ckpt = build_checkpoint(tmp_path / "cls", max_positions=64)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "pooling": "max"}))
    assert checkpoint_pooling(ckpt) == "max"
    (ckpt / "config.json").write_text(json.dumps({**config, "pooling": "bogus"}))
    with pytest.raises(ModelError, match="pooling"):
        checkpoint_pooling(ckpt)


# ------------------------------------------------------------- the server's embeddings

ST_TEXTS = [
    "a dog is an animal .",
    "the river bank at night",
    "an abstract concept formed by extracting common features from specific examples",
]


@pytest.fixture(scope="module")
def st_models(tmp_path_factory) -> Path:
    """sentence-transformers directories written by sentence-transformers itself (a random
    transformers BertModel under models.Transformer, then models.Pooling, with or without
    models.Normalize); nothing is downloaded."""
    pytest.importorskip("sentence_transformers")
    from hf_testing import hf_bert_dir, offline, st_dir

    offline()
    root = tmp_path_factory.mktemp("st")
    base = hf_bert_dir(root / "base", head="BertModel", seed=7)
    st_dir(root / "st-cls", base, pooling="cls", normalize=True)
    st_dir(root / "st-max", base, pooling="max", normalize=False)
    return root


@pytest.mark.parametrize(("name", "pooling", "normalize"), [("st-cls", "cls", True),
                                                            ("st-max", "max", False)])  # fmt: skip
def test_bert_eval_embeds_a_sentence_transformers_directory_as_the_server_does(
    st_models, name, pooling, normalize, one_torch_thread, capsys
):
    directory = st_models / name
    embedder = CheckpointEmbedder.load(directory)  # what bert-eval --task retrieval uses
    assert (embedder.pooling, embedder.normalize) == (pooling, normalize)
    ours = embedder.embed(ST_TEXTS, batch_size=2).numpy()
    with TestClient(create_app(serve_config(directory, precision="fp32"))) as client:
        r = client.post("/embed", json={"inputs": ST_TEXTS})  # the checkpoint's defaults
        assert r.status_code == 200, r.text
        served = np.array(r.json())
    np.testing.assert_allclose(ours, served, atol=1e-5, rtol=0)
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) is normalize  # the two cases differ indeed

    gloss = directory.parent / "glosses.txt"
    gloss.write_text(
        "dog, domestic dog: a member of the genus Canis. The dog barked all night.\n"
        "bank: sloping land beside a body of water. They pulled the canoe up on the bank.\n",
        encoding="utf-8",
    )
    rc, out, err = _run_cli(
        ["--task", "retrieval", "--checkpoint", str(directory), "--corpus", str(gloss)], capsys
    )
    assert rc == 0, err
    assert (out["pooling"], out["normalize"]) == (pooling, normalize)
    assert out["max_seq_length"] == embedder.max_length
