"""Pretraining: masked-language modelling, optionally with a contrastive and a sentence-order
objective, from corpus files to a servable checkpoint (`bert-train`).

    config.py          TrainConfig and the YAML + `--key value` loader
    batches.py         masked micro-batches (and sentence pairs) at a data position
    contrastive.py     InfoNCE over pooled embeddings: gloss pairs and/or SimCSE, their batches
    sentence_order.py  sentence-order / next-sentence pairs cut from packed rows
    prepare.py         tokenizer, model config, data, then the loop: `run_training`
    trainer.py         the loop (AMP, accumulation, clipping, DDP, non-finite guard)
    cli.py             `bert-train`

Deliberately not here: NSP as BERT's data pipeline did it (pairs come from packed rows) and
fine-tuning heads (finetune/).
"""
