"""BERT for masked-language modelling with HuggingFace-compatible checkpoints.

Public surface (the contract with training and serving):
    from model import BertConfig, BertForMaskedLM, CheckpointError, ConfigError, pool

Depends only on torch, safetensors and the stdlib; knows nothing about tokenizers, training
loops or HTTP.
"""

from model.bert import IGNORE_INDEX, POOLINGS, BertForMaskedLM, MaskedLMOutput, pool
from model.config import BertConfig
from model.errors import CheckpointError, ConfigError, ModelError, ModelInputError

__all__ = [
    "IGNORE_INDEX",
    "POOLINGS",
    "BertConfig",
    "BertForMaskedLM",
    "CheckpointError",
    "ConfigError",
    "MaskedLMOutput",
    "ModelError",
    "ModelInputError",
    "pool",
]
