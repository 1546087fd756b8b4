"""Fine-tuning a checkpoint as a text classifier or as a reranker (`bert-finetune`).

    config.py    FinetuneConfig and its YAML + flag loader (task: classify | rerank)
    tuner.py     what every task shares on the loop (`Tuner`); the classifier (`FineTuner`)
    reranker.py  a cross-encoder on query/text pairs with mined hard negatives (`RerankTuner`)
    cli.py       `bert-finetune`

Deliberately not here: multi-label tasks, pair classification other than reranking, and several
processes (DDP).
"""
