"""Class sensitivity and image recovery (Nie, Zhang & Patel, 2018, "A Theoretical Explanation for
Perplexing Behaviors of Backpropagation-based Visualizations", ICML).

- :func:`class_sensitivity_scores`: the map explaining the predicted class compared with the maps for
  other classes of the same image. Scores near 1 mean the method draws the same picture whatever
  class it is asked about — it does not explain the decision.
- :func:`image_recovery`: each method's map on *randomly initialised* networks, correlated with the
  input image. Nie et al. showed that guided backpropagation and DeconvNet reconstruct the image
  even when the network has learned nothing; a map that looks like the image on a random network
  is image recovery, not explanation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

from saliency.engine import Explanation, explain
from saliency.evaluation.similarity import METRICS, map_similarity, nanmean, noise_baseline, pearson

MAX_OTHER_CLASSES = 7
"""Other classes compared per image (all of them when the model has at most this many more)."""
VGG_MIN_SIZE = 32
"""The smallest input side VGG-16 takes."""
RECOVERY_IMAGES = 4
"""Images used for image recovery by default (a random VGG-16 is slow on a CPU)."""


@dataclass
class ClassSensitivity:
    """Mean similarity between the predicted class's map and other classes' maps, per method and metric."""

    scores: dict[str, dict[str, float]]
    baseline: dict[str, float]
    other_classes: int
    n: int

    def to_dict(self) -> dict:
        return {"scores": self.scores, "baseline": self.baseline, "metrics": METRICS,
                "other_classes_per_image": self.other_classes, "n_images": self.n,
                "baselines": {"noise": "the predicted class's map against uniform noise"}}


def other_classes(top: Tensor, num_classes: int, count: int = MAX_OTHER_CLASSES, seed: int = 0) -> Tensor:
    """``[N, k]`` class indices other than each row's ``top`` class: all of them when there are at
    most ``count``, else ``count`` drawn at random (the same draw for a given ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in top.tolist():
        others = torch.tensor([c for c in range(num_classes) if c != t], dtype=torch.long)
        if len(others) > count:
            others = others[torch.randperm(len(others), generator=generator)[:count]]
        rows.append(others)
    return torch.stack(rows)


def class_sensitivity_scores(model: nn.Module, inputs: Tensor, methods: str | Sequence[str] = "all", *,
                      max_others: int = MAX_OTHER_CLASSES, seed: int = 0, reference: Explanation | None = None,
                      on_step: Callable[[int], object] | None = None) -> ClassSensitivity:
    """Similarity (:data:`METRICS`) of each method's map for the predicted class with its maps for
    other classes of the same image, averaged over images and classes.

    ``reference``: the explanation of the predicted classes, if already computed.
    ``on_step(1)`` after each other class.
    """
    if reference is None:
        reference = explain(model, inputs, methods)
    names = list(reference)
    others = other_classes(reference.targets.cpu(), reference.logits.shape[1], max_others, seed)
    found: dict[str, list[dict[str, float]]] = {m: [] for m in names}
    for k in range(others.shape[1]):
        result = explain(model, inputs, names, target=others[:, k])
        for m in names:
            found[m].extend(map_similarity(reference[m][j], result[m][j]) for j in range(len(inputs)))
        if on_step is not None:
            on_step(1)
    scores = {m: {key: nanmean(s[key] for s in found[m]) for key in METRICS} for m in names}
    baseline = noise_baseline([reference[m][j] for m in names for j in range(len(inputs))], seed)
    return ClassSensitivity(scores=scores, baseline=baseline, other_classes=int(others.shape[1]), n=len(inputs))


def random_vgg16(channels: int = 3, seed: int = 0, num_classes: int = 1000) -> nn.Module:
    """torchvision's VGG-16 with its own random initialisation (no weights are loaded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.vgg16(weights=None, num_classes=num_classes)
        if channels != 3:
            net.features[0] = nn.Conv2d(channels, 64, 3, padding=1)
        return net.eval()


class ConvReluPool(nn.Module):
    """One 3×3 convolution, ReLU and 2×2 max-pooling, read out by a linear layer over an 8×8 grid."""

    def __init__(self, channels: int = 3, filters: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, filters, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.readout = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(filters * 64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x))


def random_conv_relu_pool(channels: int = 3, seed: int = 0) -> nn.Module:
    """A randomly initialised :class:`ConvReluPool`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConvReluPool(channels).eval()


RANDOM_NETWORKS: dict[str, tuple[str, Callable[[int, int], nn.Module]]] = {
    "vgg16": ("VGG-16, random weights", random_vgg16),
    "conv-relu-pool": ("one conv-ReLU-maxpool layer, random weights", random_conv_relu_pool),
}
"""The random networks of :func:`image_recovery`: key -> (description, build(channels, seed))."""


@dataclass
class ImageRecovery:
    """Mean Pearson correlation of each method's signed map with the input, per random network.

    ``scores[network][method]``; ``baseline[network]``: the same for uniform noise instead of a map.
    """

    scores: dict[str, dict[str, float]]
    baseline: dict[str, float]
    networks: dict[str, str]
    n: int

    def to_dict(self) -> dict:
        return {"scores": self.scores, "baseline": self.baseline, "networks": self.networks, "n_images": self.n,
                "metric": "Pearson correlation of the signed map (all channels) with the input, centred per image",
                "baselines": {"noise": "uniform noise instead of a map"}}


def image_recovery(inputs: Tensor, methods: str | Sequence[str] = "all", *,
                   networks: Mapping[str, nn.Module] | None = None, seed: int = 0,
                   on_step: Callable[[int], object] | None = None) -> ImageRecovery:
    """Correlation of each method's map with ``inputs`` ``[N, C, H, W]`` on random networks
    (VGG-16 is left out for inputs under 32 × 32).

    ``networks`` (name -> module) default to :data:`RANDOM_NETWORKS` built with ``seed``. The score
    is the Pearson correlation of the signed attribution with the input minus its mean, over all
    channels and pixels; it explains each network's own top-1 class. ``on_step(1)`` per network.
    """
    descriptions = {name: entry[0] for name, entry in RANDOM_NETWORKS.items()}
    if networks is None:
        small = min(inputs.shape[-2:]) < VGG_MIN_SIZE  # VGG-16's five poolings need 32 pixels
        networks = {name: build(inputs.shape[1], seed) for name, (_, build) in RANDOM_NETWORKS.items()
                    if not (small and name == "vgg16")}
    rng = np.random.default_rng(seed)
    scores, baseline = {}, {}
    for name, net in networks.items():
        result = explain(net, inputs, methods)
        centred = [inputs[j] - inputs[j].mean() for j in range(len(inputs))]
        scores[name] = {m: nanmean(pearson(result[m][j], centred[j]) for j in range(len(inputs))) for m in result}
        baseline[name] = nanmean(pearson(rng.uniform(-1, 1, tuple(c.shape)), c) for c in centred)
        if on_step is not None:
            on_step(1)
    return ImageRecovery(scores=scores, baseline=baseline,
                         networks={name: descriptions.get(name, type(net).__name__) for name, net in networks.items()},
                         n=len(inputs))
