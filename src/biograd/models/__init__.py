"""Plain, rule-agnostic models. Every rule trains the same ``nn.Module`` instances."""

from biograd.models.cnn import lenet, simple_vgg
from biograd.models.mlp import mlp
from biograd.models.resnet import ResNet, resnet18

__all__ = ["mlp", "lenet", "simple_vgg", "resnet18", "ResNet"]
