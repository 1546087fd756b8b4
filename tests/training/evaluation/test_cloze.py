"""Whole-word cloze: item selection, scoring, the n-gram baseline, and agreement with the server.

The server test is the promise of `bert-eval --task cloze`: the same items sent to `/fill-mask`
give the same top-1 / top-5 figures as the offline evaluation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from app_testing import serve_config
from fastapi.testclient import TestClient

from app.main import create_app
from tokenization import WordPieceTokenizer
from training.evaluation.cli import main as eval_main
from training.evaluation.cloze import (
    ClozeItem,
    cloze_items,
    eligible_line,
    evaluate_checkpoint_cloze,
    model_predictor,
    score_cloze,
    vocab_word_filter,
)
from training.evaluation.ngram import NGramModel, unigram_predictor, words

ROOT = Path(__file__).resolve().parents[3]
DEFAULT = ROOT / "checkpoints" / "default"
VALID = [ROOT / "data" / "wordnet.valid.txt", ROOT / "data" / "pydocs.valid.txt"]


class _Vocab:
    def __init__(self, tokens, lowercase=True):
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.lowercase = lowercase


def test_eligible_lines_count_words_and_characters():
    assert eligible_line("one two three four five six")
    assert not eligible_line("one two three four five")  # 5 words
    assert not eligible_line(" ".join(["w"] * 31))
    assert not eligible_line("a " * 5 + "x" * 200)  # over 200 characters


def test_items_mask_whole_single_token_words(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text(
        "the cat sat on the mat today.\n"  # eligible: the, cat, sat, the, mat, today
        "too short a line.\n"
        "x1cat is_cat cat's dog2 and more words here\n",
        encoding="utf-8",
    )
    accept = vocab_word_filter([_Vocab(["the", "cat", "sat", "mat", "and", "more", "words"])])
    items = cloze_items([f], accept, seed=0, max_items=0)
    assert [it.line for it in items] == [1, 3]
    for it in items:
        assert it.text[it.start : it.end].lower() == it.answer
        assert it.masked().count("[MASK]") == 1
    # Line 3: "x1cat", "is_cat" and "dog2" are not words of their own; "cat" of "cat's" is.
    assert items[1].answer in {"cat", "and", "more", "words"}
    assert (items[1].start, items[1].answer) != (2, "cat")  # never the "cat" inside "x1cat"


def test_items_are_fixed_by_seed_and_per_file(tmp_path):
    lines = [f"word{i} alpha beta gamma delta epsilon zeta\n" for i in range(50)]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(lines), encoding="utf-8")
    b.write_text("".join(lines), encoding="utf-8")
    accept = vocab_word_filter([_Vocab(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])])
    one = cloze_items([a], accept, seed=3, max_items=10)
    both = cloze_items([a, b], accept, seed=3, max_items=10)
    assert one == both[:10] == cloze_items([a], accept, seed=3, max_items=10)
    assert one != cloze_items([a], accept, seed=4, max_items=10)
    assert len(both) == 20 and {it.corpus for it in both} == {"a.txt", "b.txt"}


def test_vocab_filter_needs_every_vocabulary():
    accept = vocab_word_filter([_Vocab(["cat", "dog"]), _Vocab(["cat"])])
    assert accept("Cat") == "cat" and accept("dog") is None
    cased = vocab_word_filter([_Vocab(["Cat"], lowercase=False)])
    assert cased("Cat") == "Cat" and cased("cat") is None


def test_score_counts_top1_topk_and_per_corpus():
    items = [
        ClozeItem("a", 1, "x cat", 2, 5, "cat"),
        ClozeItem("a", 2, "x dog", 2, 5, "dog"),
        ClozeItem("b", 1, "x cow", 2, 5, "cow"),
        ClozeItem("b", 2, "x pig", 2, 5, "pig"),
    ]
    preds = [["cat"], ["cow", "dog"], ["x", "y", "z", "w", "v", "cow"], []]
    s = score_cloze(items, preds)
    assert (s.top1, s.top5) == (0.25, 0.5)
    assert s.by_corpus == {
        "a": {"items": 2, "top1": 0.5, "top5": 1.0},
        "b": {"items": 2, "top1": 0.0, "top5": 0.0},
    }
    with pytest.raises(ValueError):
        score_cloze(items, preds[:2])


# --- baselines -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_ngram(tmp_path_factory):
    f = tmp_path_factory.mktemp("ngram") / "train.txt"
    f.write_text(
        "of or relating to the study of plants.\n" * 5
        + "of or relating to the study of animals.\n" * 2
        + "a person who studies plants.\n"
        + "the cat sat on the mat.\n",
        encoding="utf-8",
    )
    return NGramModel.fit([f])


def test_words_split_like_bert():
    assert words("Of, or (X)") == ["of", ",", "or", "(", "x", ")"]


def test_ngram_uses_both_sides(toy_ngram):
    cands = ["plants", "animals", "study", "relating", "cat", "mat", "person"]
    predict = toy_ngram.predictor(cands, k=3)

    def item(text: str, word: str) -> ClozeItem:
        start = text.index(word)
        return ClozeItem("t", 1, text, start, start + len(word), word)

    items = [
        item("of or relating to the study of plants.", "relating"),
        item("of or relating to the study of plants.", "study"),
        item("the cat sat on the mat.", "mat"),
    ]
    got = predict(items)
    assert [g[0] for g in got] == ["relating", "study", "mat"]
    assert score_cloze(items, got).top1 == 1.0


def test_ngram_shortcut_equals_exact_scores(toy_ngram):
    """Candidates never seen next to the gap's neighbours are scored in one vector operation;
    their scores must equal the exact per-candidate ones."""
    m = toy_ngram
    cands = ["plants", "animals", "study", "relating", "cat", "mat", "person", "unseenword"]
    text = "a person who studies plants."
    item = ClozeItem("t", 1, text, text.index("studies"), text.index(" plants"), "studies")
    l2, l1 = m.word_id("person"), m.word_id("who")
    r1, r2 = m.word_id("plants"), m.word_id(".")
    exact = [m.gap_score(m.word_id(w), l2, l1, r1, r2) for w in cands]
    np.testing.assert_allclose(m.predictor(cands).scores(item), exact, rtol=1e-12)


def test_ngram_probabilities_sum_to_one(toy_ngram):
    m = toy_ngram
    a, b = m.word_id("the"), m.word_id("study")
    total = sum(m.p3(c, a, b) for c in range(m.vocab_size))
    # Mass left for never-counted words (the add-0.1 unigram reserves one extra slot).
    assert math.isclose(total + m.p3(-1, a, b), 1.0, rel_tol=1e-9)


def test_unigram_ranks_by_frequency(toy_ngram):
    got = unigram_predictor(toy_ngram, ["cat", "plants", "study"], k=2)([None, None])
    assert got == [["study", "plants"]] * 2


# --- the model through bert-eval and through the server --------------------------------------


def test_bert_eval_cloze_equals_fill_mask_server(one_torch_thread, capsys):
    tok = WordPieceTokenizer.from_pretrained(DEFAULT)
    items = cloze_items(VALID, vocab_word_filter([tok]), seed=0, max_items=40)
    assert len(items) == 80
    assert eval_main(
        ["--task", "cloze", "--checkpoint", str(DEFAULT), "--corpus", *map(str, VALID),
         "--max-items", "40"]
    ) == 0  # fmt: skip
    offline = json.loads(capsys.readouterr().out)
    assert offline["items"] == 80 and set(offline["by_corpus"]) == {p.name for p in VALID}

    # Pinned: bert-eval computes in fp32 in process; the server must too for equal answers.
    config = serve_config(DEFAULT, max_input_tokens=128, max_batch_tokens=4096, precision="fp32")
    with TestClient(create_app(config)) as c:
        preds = []
        for s in range(0, len(items), 8):
            chunk = items[s : s + 8]
            r = c.post(
                "/fill-mask",
                json={"inputs": [it.masked() for it in chunk], "top_k": 5, "truncate": True},
            )
            assert r.status_code == 200, r.text
            preds += [[cand["token_str"] for cand in p[0]] for p in r.json()["predictions"]]
    served = score_cloze(items, preds).to_dict()
    for key in ("items", "top1", "top5", "by_corpus"):
        assert served[key] == offline[key], key


def test_cloze_reports_an_empty_item_set(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("too short.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no cloze items"):
        evaluate_checkpoint_cloze(DEFAULT, [str(f)])


def test_model_predictor_handles_truncated_masks(one_torch_thread):
    from model import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(DEFAULT)
    tok = WordPieceTokenizer.from_pretrained(DEFAULT)
    long_text = "word " * 300 + "[MASK]"
    got = model_predictor(model, tok, k=3)(["the [MASK] sat on the mat.", long_text])
    assert len(got[0]) == 3 and got[1] == []


def test_model_predictor_ranks_only_the_candidates_as_fill_mask_targets_does(one_torch_thread):
    """The like-for-like row of bench_cloze: ranking restricted to the baselines' candidate words
    keeps the model's order among them (the order /fill-mask gives them as targets)."""
    from model import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(DEFAULT)
    tok = WordPieceTokenizer.from_pretrained(DEFAULT)
    text = "a [MASK] is a domestic animal."
    full = model_predictor(model, tok, k=50)([text])[0]
    others = [w for w in ("function", "river", "table", "green", "blue") if w not in full[:8]]
    candidates = [*others[:3], full[7], full[3]]  # two the model ranks highly
    got = model_predictor(model, tok, k=5, candidates=candidates)([text])[0]
    assert sorted(got) == sorted(candidates)
    assert got[:2] == [full[3], full[7]]  # their order in the full ranking is kept
