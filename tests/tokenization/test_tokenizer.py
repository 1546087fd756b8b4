"""Known-answer and behaviour tests of the WordPiece tokenizer (no reference library needed)."""

from __future__ import annotations

import json

import pytest

from tokenization import VocabError, WordPieceTokenizer, basic_tokenize, split_words
from tokenization.tokenizer import truncation_lengths
from tokenization.trainer import count_words, learn_vocab
from tokenization.wordpiece import wordpiece

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAPER_VOCAB = [*SPECIALS, "un", "##aff", "##able", "the", "cat", ",", "!", "hello", "world", "##s"]


@pytest.fixture
def paper_tok() -> WordPieceTokenizer:
    return WordPieceTokenizer(PAPER_VOCAB)


def test_basic_tokenization_known_answers():
    assert split_words("Héllo, wörld!") == [
        ("hello", 0, 5),
        (",", 5, 6),
        ("world", 7, 12),
        ("!", 12, 13),
    ]
    assert basic_tokenize("Don't\tstop…") == ["don", "'", "t", "stop", "…"]
    assert basic_tokenize("中文ab") == ["中", "文", "ab"]
    assert basic_tokenize("a\x00b\u200bc d") == ["abc", "d"]  # removed characters join the word
    assert basic_tokenize("ΟΔΟΣ") == ["οδοσ"]  # per-character lowercasing, like the Rust tokenizer
    assert basic_tokenize("Café", lowercase=False) == ["Café"]
    assert basic_tokenize("$5^`~") == ["$", "5", "^", "`", "~"]
    assert basic_tokenize(" \t\u3000\n") == []


def test_wordpiece_greedy_longest_match():
    vocab = {t: i for i, t in enumerate(PAPER_VOCAB)}
    assert wordpiece("unaffable", vocab, 5) == [("un", 0, 2), ("##aff", 2, 5), ("##able", 5, 9)]
    assert wordpiece("unaffablex", vocab, 5) == [("[UNK]", 0, 10)]
    assert wordpiece("the" * 40, vocab, 5) == [("[UNK]", 0, 120)]  # over 100 characters


def test_encode_layout_offsets_and_tokens(paper_tok):
    enc = paper_tok.encode("Unaffable cats!")
    assert enc.tokens == ["[CLS]", "un", "##aff", "##able", "cat", "##s", "!", "[SEP]"]
    assert enc.ids == [2, 5, 6, 7, 9, 14, 11, 3]
    assert enc.offsets == [(0, 0), (0, 2), (2, 5), (5, 9), (10, 13), (13, 14), (14, 15), (0, 0)]
    assert enc.type_ids == [0] * 8 and enc.attention_mask == [1] * 8 and len(enc) == 8
    assert enc.special_tokens_mask == [1, 0, 0, 0, 0, 0, 0, 1]


def test_pair_truncation_and_padding(paper_tok):
    enc = paper_tok.encode("hello world", "the cat")
    assert enc.tokens == ["[CLS]", "hello", "world", "[SEP]", "the", "cat", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 1, 1, 1]
    assert enc.offsets[4:6] == [(0, 3), (4, 7)]  # offsets of the second text index the second text
    cut = paper_tok.encode("hello world hello world", "the cat", max_length=7, truncation=True)
    assert cut.tokens == ["[CLS]", "hello", "world", "[SEP]", "the", "cat", "[SEP]"]
    batch = paper_tok.encode_batch(["hello", "hello world the cat"], padding="longest")
    assert [len(e) for e in batch] == [6, 6]
    assert batch[0].ids[-3:] == [0, 0, 0] and batch[0].attention_mask == [1, 1, 1, 0, 0, 0]
    assert batch[0].offsets[-1] == (0, 0) and batch[0].tokens[-1] == "[PAD]"
    fixed = paper_tok.encode_batch(
        ["hello world the cat"], max_length=4, truncation=True, padding="max_length"
    )
    assert fixed[0].tokens == ["[CLS]", "hello", "world", "[SEP]"]


def test_truncation_lengths_known_answers():
    # longest_first: the shorter text stays whole while the longer gets at least as much.
    assert truncation_lengths(10, 4, 8) == (4, 4)
    assert truncation_lengths(10, 2, 8) == (6, 2)
    assert truncation_lengths(2, 10, 8) == (2, 6)
    assert truncation_lengths(9, 9, 5) == (2, 3)  # split evenly, the odd token to the second
    assert truncation_lengths(3, 2, 8) == (3, 2)  # fits: untouched
    assert truncation_lengths(10, None, 4) == (4, None)
    assert truncation_lengths(10, 4, 8, "only_first") == (4, 4)
    assert truncation_lengths(4, 10, 8, "only_second") == (4, 4)
    assert truncation_lengths(5, 9, 0, "only_second") == (0, 0)  # no room: both emptied
    with pytest.raises(ValueError, match=r"only_second' cannot fit .* first text alone has 10"):
        truncation_lengths(10, 4, 8, "only_second")
    with pytest.raises(ValueError, match="only_first' cannot fit"):
        truncation_lengths(4, 4, 4, "only_first")  # the first would keep 0 tokens: refused
    with pytest.raises(ValueError, match="needs a pair"):
        truncation_lengths(10, None, 4, "only_second")


def test_pair_strategies_type_ids_and_sequence_ids(paper_tok):
    long, short = "hello world hello world", "the cat"
    enc = paper_tok.encode(long, short, truncation="only_first", max_length=7)
    assert enc.tokens == ["[CLS]", "hello", "world", "[SEP]", "the", "cat", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 1, 1, 1] and enc.truncated
    assert enc.sequence_ids == [None, 0, 0, None, 1, 1, None]
    enc = paper_tok.encode(short, long, truncation="only_second", max_length=7)
    assert enc.tokens == ["[CLS]", "the", "cat", "[SEP]", "hello", "world", "[SEP]"]
    assert enc.offsets[4:6] == [(0, 5), (6, 11)]  # the second text's characters
    assert not paper_tok.encode(short, short, truncation=True, max_length=7).truncated
    with pytest.raises(ValueError, match="only_second"):
        paper_tok.encode(long, short, truncation="only_second", max_length=7)
    with pytest.raises(ValueError, match="truncation must be"):
        paper_tok.encode(long, short, truncation="longest")
    with pytest.raises(ValueError, match="no room for the 3 special tokens"):
        paper_tok.encode(long, short, truncation=True, max_length=2)
    # Without special tokens the texts just follow each other.
    bare = paper_tok.encode("hello", "cat", add_special_tokens=False)
    assert bare.tokens == ["hello", "cat"] and bare.sequence_ids == [0, 1]
    assert bare.type_ids == [0, 1]
    # A literal special token belongs to its text; padding to none.
    batch = paper_tok.encode_batch(["the [MASK]", "hello"], ["cat", "world the cat"])
    assert batch[0].sequence_ids == [None, 0, 0, None, 1, None, None]
    assert batch[0].type_ids == [0, 0, 0, 0, 1, 1, 0]
    assert batch[1].sequence_ids == [None, 0, None, 1, 1, 1, None]


def test_literal_special_tokens_are_kept(paper_tok):
    enc = paper_tok.encode("the [MASK] cat")
    assert enc.tokens == ["[CLS]", "the", "[MASK]", "cat", "[SEP]"]
    assert enc.offsets[2] == (4, 10)
    # Lowercase "[mask]" is ordinary text, as in BERT.
    assert "[MASK]" not in paper_tok.encode("the [mask]").tokens[1:-1]


def test_decode(paper_tok):
    ids = paper_tok.encode("Unaffable cats, hello!").ids
    assert paper_tok.decode(ids) == "[CLS] unaffable cats , hello ! [SEP]"
    assert paper_tok.decode(ids, skip_special_tokens=True) == "unaffable cats , hello !"
    assert paper_tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True) == (
        "unaffable cats, hello!"
    )
    with pytest.raises(ValueError, match="outside the vocabulary"):
        paper_tok.decode([99])
    with pytest.raises(TypeError, match="ints"):
        paper_tok.decode(["5"])


def test_bad_input_raises_clear_errors(paper_tok, tmp_path):
    with pytest.raises(TypeError, match="str"):
        paper_tok.encode(b"bytes")
    with pytest.raises(TypeError, match="str"):
        paper_tok.encode(None)
    with pytest.raises(TypeError, match="list of str"):
        paper_tok.encode_batch("not a list")
    with pytest.raises(VocabError, match=r"\[MASK\]"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])
    with pytest.raises(VocabError, match="twice"):
        WordPieceTokenizer([*SPECIALS, "a", "a"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "vocab.txt").write_text("")
    with pytest.raises(VocabError, match="empty"):
        WordPieceTokenizer.from_pretrained(tmp_path / "empty")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "vocab.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(VocabError, match="UTF-8"):
        WordPieceTokenizer.from_pretrained(tmp_path / "binary")
    with pytest.raises(VocabError, match="not found"):
        WordPieceTokenizer.from_pretrained(tmp_path / "missing")
    (tmp_path / "noconf").mkdir()
    (tmp_path / "noconf" / "vocab.txt").write_text("\n".join(PAPER_VOCAB))
    (tmp_path / "noconf" / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(VocabError, match="JSON object"):
        WordPieceTokenizer.from_pretrained(tmp_path / "noconf")


def test_save_load_round_trip(paper_tok, tmp_path):
    cased = WordPieceTokenizer([*PAPER_VOCAB, "Hello"], lowercase=False, model_max_length=128)
    cased.save_pretrained(tmp_path)
    loaded = WordPieceTokenizer.from_pretrained(tmp_path)
    assert loaded.lowercase is False and loaded.model_max_length == 128
    assert loaded.vocab == cased.vocab
    assert loaded.encode("Hello hello").tokens == ["[CLS]", "Hello", "hello", "[SEP]"]
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["do_lower_case"] is False and cfg["tokenizer_class"] == "BertTokenizer"
    # No temporary files are left behind by the atomic writes.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer_config.json", "vocab.txt"]


def test_learner_merges_by_frequency_and_is_deterministic():
    counts = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}
    vocab = learn_vocab(counts, vocab_size=30, min_frequency=1)
    # Worked by hand: pair counts ##u+##g 20, ##u+##n 16, h+##ug 15, p+##un 12, then a tie at 5
    # between p+##ug and hug+##s goes to the smaller ids (p), then hugs 5, then bun 4.
    alphabet = ["b", "h", "p", "##g", "##n", "##s", "##u"]
    merges = ["##ug", "##un", "hug", "pun", "pug", "hugs", "bun"]
    assert vocab == SPECIALS + alphabet + merges
    assert learn_vocab(dict(reversed(list(counts.items()))), 30, 1) == vocab
    # min_frequency stops merging once the best pair is rarer than it.
    assert learn_vocab(counts, 100, min_frequency=11) == SPECIALS + alphabet + merges[:4]
    # vocab_size caps the number of merges.
    assert learn_vocab(counts, 14, min_frequency=1) == SPECIALS + alphabet + merges[:2]


def test_count_words_matches_basic_tokenize():
    lines = ["A cat, a CAT.\n", "naïve\u200bcafé x\x0by\n"]
    counts = count_words(lines)
    assert counts == {"a": 2, "cat": 2, ",": 1, ".": 1, "naivecafe": 1, "xy": 1}


def test_train_from_files_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("the cat sat\nthe cat ran\n" * 20)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "the dog sat"}) + "\n\n")
    tok = WordPieceTokenizer.train(
        [tmp_path / "a.txt", tmp_path / "b.jsonl"], vocab_size=40, min_frequency=2
    )
    assert tok.vocab_size <= 40 and "the" in tok.vocab and "cat" in tok.vocab
    assert tok.encode("the dog").tokens[1] == "the"
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        WordPieceTokenizer.train([tmp_path / "bad.jsonl"], vocab_size=40)
    with pytest.raises(ValueError, match="not found"):
        WordPieceTokenizer.train([tmp_path / "nope.txt"], vocab_size=40)
    with pytest.raises(ValueError, match="vocab_size"):
        WordPieceTokenizer.train([tmp_path / "a.txt"], vocab_size=3)


def test_cli_train_and_encode(tmp_path, corpus_sample, capsys):
    from tokenization.cli import main

    assert (
        main(
            ["train", "--corpus", str(corpus_sample), "--vocab-size", "500", "--out", str(tmp_path)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "vocabulary: 500 tokens" in out
    assert main(["encode", "--vocab", str(tmp_path), "--json", "The cat."]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["tokens"][0] == "[CLS]" and payload["tokens"][-2:] == [".", "[SEP]"]
    assert main(["encode", "--vocab", str(tmp_path / "missing"), "x"]) == 2
    assert "not found" in capsys.readouterr().err
