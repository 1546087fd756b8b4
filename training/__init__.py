"""MLM pretraining of `model.BertForMaskedLM` with our WordPiece tokenizer.

Modules, in the order a run uses them:
    config.py         TrainConfig and the YAML + `--key value` loader
    data.py           corpus files -> cached token ids -> packed rows; resumable row order
    masking.py        dynamic 80/10/10 masking (optionally whole-word)
    pairs.py          (example, definition) pairs of WordNet glosses, leak-free of a holdout
    contrastive.py    InfoNCE over pooled embeddings: gloss pairs and/or SimCSE, their batches
    schedule.py       warmup + cosine or linear LR over steps or over a wall-clock budget
    distributed.py    DDP from torchrun's environment, barriers, precision (fp32/bf16/fp16)
    setup.py          tokenizer, model config, data, then the loop: `run_training`
    trainer.py        the loop (AMP, accumulation, clipping, DDP, non-finite guard)
    checkpointing.py  atomic checkpoint directories, `latest`/`best` pointers, rotation
    evaluate.py       validation loss / accuracy / perplexity, and `bert-eval` (also cloze, retrieval)
    cloze.py          whole-word fill-in-the-blank items and scores (what /fill-mask users see)
    ngram.py          count-based cloze baselines (unigram, two-sided trigram)
    retrieval.py      example -> definition retrieval metrics, TF-IDF baseline
    probe_set.py      writes app/probes.json, the serving precision gate's probe set
    metrics.py        metrics.jsonl, TensorBoard, curves.png
    cli.py            `bert-train`

Each checkpoint directory is servable as is (model.save_pretrained + tokenizer.save_pretrained)
and also holds training_state.pt and training_config.yaml for exact resume and provenance.

Deliberately not here: NSP, fine-tuning heads, and anything the server needs at run time
(`app/` never imports this package; it reads the pooling a run recorded in config.json).
"""

from training.config import TrainConfig, TrainConfigError, load_run_config

__all__ = ["TrainConfig", "TrainConfigError", "load_run_config"]
