"""Plain, rule-agnostic models. Every rule trains the same ``nn.Module`` instances."""

from biograd.models.cnn import lenet, simple_vgg
from biograd.models.mlp import mlp
from biograd.models.resnet import ResNet, resnet18
from biograd.models.sequence import (
    LSTMClassifier,
    RNNClassifier,
    TransformerBlockClassifier,
    lstm_classifier,
    rnn_classifier,
    transformer_block_classifier,
)

__all__ = [
    "LSTMClassifier",
    "RNNClassifier",
    "ResNet",
    "TransformerBlockClassifier",
    "lenet",
    "lstm_classifier",
    "mlp",
    "resnet18",
    "rnn_classifier",
    "simple_vgg",
    "transformer_block_classifier",
]
