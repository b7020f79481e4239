"""The images the checks run on: shapes images with object masks, prepared for any model's input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from saliency.models.shapes import CLASSES, make_batch
from saliency.models.train import TEST_SEED
from saliency.preprocess import Preprocessing


@dataclass(frozen=True)
class EvalImages:
    """``inputs``: model inputs ``[N, C, H, W]``; ``masks``: bool ``[N, H, W]`` object masks at the
    input's size; ``labels``: shapes class indices (:data:`~saliency.models.shapes.CLASSES`)."""

    inputs: Tensor
    masks: np.ndarray
    labels: np.ndarray


def shapes_images(preprocessing: Preprocessing, count: int, seed: int = 0) -> EvalImages:
    """``count`` shapes images (classes in turn), put through ``preprocessing``, with their masks.

    They are drawn from the held-out stream the demo model is tested on (never trained on), so the
    seed picks a different set each time. Masks go through the same resize and crop (nearest pixel).
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    images, labels, masks = make_batch(count, seed=TEST_SEED + seed)
    inputs, masked = [], []
    for image, mask in zip(images, masks):
        prepared = preprocessing.prepare(Image.fromarray(image, mode="RGB"))
        side = prepared.tensor.shape[-1], prepared.tensor.shape[-2]
        resized = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize(
            side, Image.Resampling.NEAREST, box=prepared.box)
        inputs.append(prepared.tensor)
        masked.append(np.asarray(resized) >= 128)
    return EvalImages(inputs=torch.cat(inputs), masks=np.stack(masked), labels=labels)


def is_shapes_model(labels: tuple[str, ...] | list[str]) -> bool:
    """Whether a model's classes are the shapes classes (so its maps should find the shape)."""
    return tuple(labels) == CLASSES
