"""Fine-tuning a checkpoint as a text classifier (`bert-finetune`).

    config.py  FinetuneConfig and its YAML + flag loader
    tuner.py   the classifier, its data and the loop (`FineTuner`)
    cli.py     `bert-finetune`

Deliberately not here: text pairs, multi-label tasks and several processes (DDP).
"""
