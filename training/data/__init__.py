"""Files -> training examples: no model and no loop, numpy arrays out (torch tensors only where a
batch is handed to a model: labelled.TokenizedExamples.batch).

    corpus.py    corpus files -> cached token ids -> packed or line rows; resumable row order
    jsonl.py     the one JSON Lines reader (corpus, labelled files, metrics.jsonl)
    labelled.py  labelled TSV/CSV/JSONL files -> label set and token ids for classifiers
    masking.py   dynamic 80/10/10 MLM masking of id batches (optionally whole-word)
    pairs.py     (example, definition) pairs of WordNet glosses, leak-free of a holdout
    rerank.py    query/text pairs for rerankers: files, dev hold-out, (query, candidate) batches

Deliberately not here: the batches of a particular objective (pretrain/) and any model.
"""
