"""Training: MLM pretraining, fine-tuning text classifiers and rerankers, and their evaluations.

Five wings, each a folder whose `__init__.py` maps its modules; a wing imports only the wings
listed above it, and pretrain/ and finetune/ never each other (tests/training/test_layout.py
keeps the maps true and the order kept):

    data/         files -> examples: corpora and their token cache, gloss pairs, labelled
                  files, reranking pairs, masking
    run/          what every run shares: settings, the loop, checkpoints, LR schedule, metrics,
                  processes
    evaluation/   MLM, cloze, retrieval (dense, sparse, reranked) metrics with their baselines,
                  classification; `bert-eval`
    pretrain/     MLM (+ contrastive, sentence order) pretraining: set-up, trainer, `bert-train`
    finetune/     a checkpoint fine-tuned as a text classifier or a reranker: `bert-finetune`

Every checkpoint directory a run writes is servable as is (model.save_pretrained +
tokenizer.save_pretrained) and also holds its training state and recipe for exact resume and
provenance. Deliberately not here: anything the server needs at run time (`app/` never imports
this package; it reads what a run recorded in config.json through `model.load_checkpoint`).
"""
