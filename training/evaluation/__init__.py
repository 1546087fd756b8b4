"""How good a model is: the metrics the loops call, and `bert-eval`'s tasks on checkpoints.

    classification.py  accuracy, macro-F1, per-class table, confusion matrix of a classifier
    cloze.py           whole-word fill-in-the-blank items and scores (what /fill-mask users see)
    mlm.py             validation loss / accuracy / perplexity with fixed masks
    ngram.py           count-based cloze baselines (unigram, two-sided trigram)
    retrieval.py       example -> definition retrieval metrics of embeddings, TF-IDF baseline
    rerank.py          a retriever's top-k reranked by a cross-encoder, on the same metrics
    sparse.py          SPLADE vectors of a checkpoint's MLM head (as /embed_sparse), retrieval
    probe_set.py       writes app/probes.json, the serving precision gate's probe set
    cli.py             `bert-eval`: a table of task runners over the modules above

Deliberately not here: training of any kind, and downstream (GLUE-style) suites.
"""
