"""BERT for masked-language modelling and sentence embeddings, with HuggingFace-compatible
checkpoints.

Public surface (the contract with training and serving):
    from model import BertConfig, BertForMaskedLM, CheckpointError, ConfigError, pool
    from model import Capabilities, LoadedCheckpoint, load_checkpoint   # the one loader
    from model import splade, activate_scores   # SPLADE vectors; CrossEncoder.predict's scores

Depends only on torch, safetensors, the stdlib and `atomicio`; knows nothing about tokenizers
(the loader takes a tokenizer factory), training loops or HTTP.
"""

from model.bert import IGNORE_INDEX, POOLINGS, BertForMaskedLM, MaskedLMOutput, pool
from model.checkpoint import Capabilities, LoadedCheckpoint, load_checkpoint
from model.config import SCORE_ACTIVATIONS, SPLADE_ACTIVATIONS, SPLADE_POOLINGS, BertConfig
from model.errors import CheckpointError, ConfigError, ModelError, ModelInputError
from model.heads import activate_scores, splade

__all__ = [
    "IGNORE_INDEX",
    "POOLINGS",
    "SCORE_ACTIVATIONS",
    "SPLADE_ACTIVATIONS",
    "SPLADE_POOLINGS",
    "BertConfig",
    "BertForMaskedLM",
    "Capabilities",
    "CheckpointError",
    "ConfigError",
    "LoadedCheckpoint",
    "MaskedLMOutput",
    "ModelError",
    "ModelInputError",
    "activate_scores",
    "load_checkpoint",
    "pool",
    "splade",
]
