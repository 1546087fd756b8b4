"""WordPiece tokenization exactly like BERT's, in the standard library alone.

    from tokenization import WordPieceTokenizer
    tok = WordPieceTokenizer.from_pretrained("checkpoints/default")
    tok.encode("The cat sat on the [MASK].").ids

Deliberately not here: tensors, model code, or anything outside the standard library (besides
`atomicio`, the dependency-free atomic-write helper every package shares).
"""

from .files import TokenizerSettings, has_tokenizer, read_tokenizer_dir
from .normalization import basic_tokenize, normalized_text, split_words
from .tokenizer import TRUNCATION_STRATEGIES, Encoding, WordPieceTokenizer, truncation_lengths
from .vocab import SPECIAL_TOKENS, VocabError

__all__ = [
    "SPECIAL_TOKENS",
    "TRUNCATION_STRATEGIES",
    "Encoding",
    "TokenizerSettings",
    "VocabError",
    "WordPieceTokenizer",
    "basic_tokenize",
    "has_tokenizer",
    "normalized_text",
    "read_tokenizer_dir",
    "split_words",
    "truncation_lengths",
]
