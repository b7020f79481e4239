"""The bundled demo classifier: a small VGG-style CNN for the :mod:`shapes <saliency.models.shapes>` data.

Blocks of 3×3 convolution → ReLU, each closed by max-pooling — the setting where DeconvNet's
switches matter; the second block's pool is the overlapping 3×3 / stride 2 kind (as in ResNet's stem
and AlexNet). A global average pool and one linear layer give the class scores.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from saliency.models.shapes import CLASSES, IMAGE_SIZE
from saliency.preprocess import Preprocessing

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "demo.pt"
"""The committed trained weights (a state dict)."""
WIDTHS: tuple[int, ...] = (16, 32, 64, 128)
"""Channels of the three conv-pool blocks and of the last convolution."""
PREPROCESSING = Preprocessing(crop=IMAGE_SIZE, resize=IMAGE_SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
"""Inputs: the shorter side resized to 64 pixels, centre-cropped, scaled to (pixel - 0.5) / 0.25."""


class ShapesNet(nn.Module):
    """``[B, 3, 64, 64]`` → ``[B, len(CLASSES)]`` class scores (any input ≥ 32×32 works).

    ``batch_norm=True`` adds batch normalisation after each convolution — used while training only;
    :func:`fold_batch_norm` then merges it into the convolutions, giving the plain network.
    """

    def __init__(self, num_classes: int = len(CLASSES), widths: tuple[int, ...] = WIDTHS,
                 batch_norm: bool = False) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.widths = tuple(widths)
        bn = batch_norm
        self.features = nn.Sequential(
            _conv(3, c1, bn), _conv(c1, c1, bn), nn.MaxPool2d(2),                        # 64 → 32
            _conv(c1, c2, bn), _conv(c2, c2, bn), nn.MaxPool2d(3, stride=2, padding=1),  # 32 → 16, overlapping
            _conv(c2, c3, bn), _conv(c3, c3, bn), nn.MaxPool2d(2),                       # 16 → 8
            _conv(c3, c4, bn),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _conv(cin: int, cout: int, batch_norm: bool = False) -> nn.Sequential:
    if batch_norm:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


@torch.no_grad()
def fold_batch_norm(model: ShapesNet) -> ShapesNet:
    """The plain (no batch-norm) network computing what ``model`` computes in eval mode."""
    plain = ShapesNet(model.classifier.out_features, model.widths, batch_norm=False)
    for source, target in zip(model.features, plain.features):
        if isinstance(target, nn.Sequential):
            conv, norm = source[0], source[1] if isinstance(source[1], nn.BatchNorm2d) else None
            weight, bias = conv.weight.clone(), conv.bias.clone()
            if norm is not None:
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                weight = weight * scale[:, None, None, None]
                bias = (bias - norm.running_mean) * scale + norm.bias
            target[0].weight.copy_(weight)
            target[0].bias.copy_(bias)
    plain.classifier.load_state_dict(model.classifier.state_dict())
    return plain.eval()


def build(num_classes: int = len(CLASSES)) -> ShapesNet:
    """A randomly initialised demo network."""
    return ShapesNet(num_classes)
