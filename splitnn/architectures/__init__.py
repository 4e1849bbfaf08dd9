"""The built-in architectures; importing this package registers each of them
(:mod:`splitnn.model_registry`), as a user's module registers its own."""

from splitnn.architectures import classic, cnn1d, mobilenetv2, resnet

__all__ = ["classic", "cnn1d", "mobilenetv2", "resnet"]
