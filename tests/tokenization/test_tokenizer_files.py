"""Tokenizer directories as transformers writes them (tokenization/files.py): ids and offsets equal
``transformers.AutoTokenizer`` on the same files for every normalisation setting, special tokens
at any id and under other names, ``tokenizer.json``-only directories, ``never_split`` (ignored,
as transformers does), sentence-transformers' ``do_lower_case``, and clear refusals."""

from __future__ import annotations

import json

import pytest
from hf_testing import vocabulary
from test_tokenizer_parity import HOSTILE

from tokenization import VocabError, WordPieceTokenizer, read_tokenizer_dir

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

EXTRA = ["中", "文", "字", "中文", "é", "##é", "café", "Café", "zürich", "Zürich", "naïve", "ΟΔΟΣ"]
TEXTS = [
    *HOSTILE,
    "The Cat sat in Zürich: café naïve, 中文字符!",
    "a [MASK] is a <mask> [PAD]x[SEP] [UNK] [CLS]",
]


def _write(directory, tokens, **settings) -> WordPieceTokenizer:
    tok = WordPieceTokenizer(tokens, **settings)
    tok.save_pretrained(directory)
    return tok


def _assert_same(ours: WordPieceTokenizer, hf) -> None:
    assert len(hf) == ours.vocab_size  # transformers 5 can silently use a 5-token vocabulary
    for text in TEXTS:
        ref = hf(text, return_offsets_mapping=True)
        enc = ours.encode(text)
        assert enc.ids == ref["input_ids"], text[:60]
        assert enc.offsets == [tuple(o) for o in ref["offset_mapping"]], text[:60]


@pytest.mark.parametrize(
    "settings",
    [
        {"lowercase": True},
        {"lowercase": False},
        {"lowercase": True, "strip_accents": False},
        {"lowercase": False, "strip_accents": True},
        {"lowercase": True, "tokenize_chinese_chars": False},
    ],
    ids=["uncased", "cased", "lower-keep-accents", "cased-strip-accents", "no-cjk-split"],
)
def test_settings_and_tokenizer_json_match_transformers(tmp_path, settings):
    tokens = vocabulary(1200, pad_id=3, lowercase=settings["lowercase"]) + EXTRA
    _write(tmp_path / "ours", tokens, **settings)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    _assert_same(WordPieceTokenizer.from_pretrained(tmp_path / "ours"), hf)
    # What transformers 5 writes: tokenizer.json and tokenizer_config.json, no vocab.txt.
    hf.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf" / "vocab.txt").exists()
    ours = WordPieceTokenizer.from_pretrained(tmp_path / "hf")
    assert ours.pad_token_id == 3 and ours.lowercase is settings["lowercase"]
    _assert_same(ours, transformers.AutoTokenizer.from_pretrained(tmp_path / "hf"))


def test_special_tokens_under_other_names_and_never_split(tmp_path):
    tokens = ["<pad>", "<unk>", "<s>", "</s>", "<mask>", *vocabulary(600)[5:], "cat"]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    names = {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "BertTokenizer",
                "never_split": ["cat"],
                "mask_token": "[MASK]",  # special_tokens_map.json wins, as in transformers
                **names,
            }
        )
    )
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"mask_token": "<mask>"}))
    ours = WordPieceTokenizer.from_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (
        (ours.mask_token, ours.mask_token_id) == (hf.mask_token, hf.mask_token_id) == ("<mask>", 4)
    )
    assert ours.cls_token == "<s>" and ours.unk_token_id == 1
    _assert_same(ours, hf)
    assert ours.encode("the<mask>cat").ids == hf("the<mask>cat")["input_ids"]
    # Saved and read back by both, the names and ids stay.
    ours.save_pretrained(tmp_path / "again")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "again")
    assert again.mask_token == "<mask>" and again.pad_token_id == 0
    _assert_same(WordPieceTokenizer.from_pretrained(tmp_path / "again"), again)


def test_sentence_transformers_do_lower_case_equals_its_lowercase_normaliser(tmp_path):
    from tokenizers import normalizers

    tokens = vocabulary(1200, lowercase=False) + EXTRA
    _write(tmp_path, tokens, lowercase=False)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    # What sentence-transformers does for do_lower_case: a Lowercase normaliser in front.
    backend = hf.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), backend.normalizer])
    ours = WordPieceTokenizer.from_pretrained(tmp_path, lowercase_input=True)
    assert ours.lowercase and ours.strip_accents is False
    _assert_same(ours, hf)


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        (
            {"tokenizer_config.json": {"tokenizer_class": "XLMRobertaTokenizer"}},
            "XLMRobertaTokenizer",
        ),
        ({"tokenizer.json": {"model": {"type": "BPE", "vocab": {}}}}, "BPE model"),
        (
            {
                "tokenizer.json": {
                    "model": {
                        "type": "WordPiece",
                        "vocab": {t: i for i, t in enumerate(vocabulary(50))},
                    },
                    "added_tokens": [{"id": 50, "content": "<new>", "special": False}],
                }
            },
            "is not special",
        ),
        (
            {"tokenizer_config.json": {"do_lower_case": "yes"}},
            "do_lower_case must be true or false",
        ),
        ({}, "no vocabulary"),
    ],
)
def test_unsupported_tokenizer_directories_are_refused_clearly(tmp_path, files, fragment):
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    if "tokenizer.json" not in files and files:
        (tmp_path / "vocab.txt").write_text("\n".join(vocabulary(50)) + "\n")
    with pytest.raises(VocabError, match=fragment.replace("(", r"\(")):
        read_tokenizer_dir(tmp_path)
