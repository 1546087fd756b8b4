"""Files -> training examples: no model and no loop, numpy arrays out.

    corpus.py    corpus files -> cached token ids -> packed or line rows; resumable row order
    jsonl.py     the one JSON Lines reader (corpus, labelled files, metrics.jsonl)
    labelled.py  labelled TSV/CSV/JSONL files -> label set and token ids for classifiers
    masking.py   dynamic 80/10/10 MLM masking of id batches (optionally whole-word)
    pairs.py     (example, definition) pairs of WordNet glosses, leak-free of a holdout

Deliberately not here: batches of a particular objective (pretrain/) and anything with torch.
"""
