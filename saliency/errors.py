"""Error types. Each message says what went wrong and what to do; CLI and API show it as is."""

from __future__ import annotations


class SaliencyError(Exception):
    """A problem the caller can fix (bad input, unknown name, missing file)."""


class UnknownMethodError(SaliencyError, ValueError):
    """A method name not in the registry."""


class TargetError(SaliencyError, ValueError):
    """A target class that is out of range, unknown, or of the wrong shape."""


class InputError(SaliencyError, ValueError):
    """An input tensor explain() cannot use."""


class ModelOutputError(SaliencyError, ValueError):
    """The model did not return one row of class scores per input."""


class NoReluError(SaliencyError, ValueError):
    """DeconvNet / guided backpropagation asked for, but the model ran no ReLU we could see."""


class CompiledModelError(NoReluError):
    """A rule or Grad-CAM layer asked for where compiled code (``torch.compile``, TorchScript) hides what it needs."""


class ImageError(SaliencyError, ValueError):
    """An image that cannot be decoded or is unsafe to decode."""


class UnknownModelError(SaliencyError, ValueError):
    """A model name that is neither registered, a torchvision classifier, nor an import path."""


class WeightsError(SaliencyError):
    """Model weights that are missing, unreadable or do not fit the architecture."""


class UnsupportedActivationWarning(UserWarning):
    """The model uses activations that DeconvNet / guided backpropagation have no rule for."""


class OptionError(SaliencyError, ValueError):
    """A method option that is unknown or of the wrong type."""
