"""Turn an upright RGB picture into a model's input tensor, remembering where the tensor came from.

:class:`Preprocessing` is the usual classifier recipe — resize the shorter side, centre-crop,
scale to [0, 1], normalise by mean/std — and :meth:`Preprocessing.prepare` returns a
:class:`Prepared`: the tensor, the original picture and the ``box`` of the original the tensor
covers, so a heatmap computed on the tensor can be laid back onto the original at its own size.

Torch is imported only to make the tensor: :meth:`Preprocessing.to_array` (numpy) is what processes
that only decode use (a batch job's decode tasks), and they never import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from saliency.errors import ImageError, InputError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Prepared:
    """One picture ready for the model.

    ``tensor``: float ``[1, C, H, W]``; ``image``: the upright RGB original; ``box``: ``(left, top,
    right, bottom)`` in the original's pixels — the region the tensor covers (the centre crop).
    """

    tensor: Tensor
    image: Image.Image
    box: Box

    @property
    def input_size(self) -> tuple[int, int]:
        """``(width, height)`` of the tensor."""
        return int(self.tensor.shape[-1]), int(self.tensor.shape[-2])

    def to_original(self, picture: Image.Image, background: Image.Image | None = None) -> Image.Image:
        """Lay ``picture`` (sized like the tensor) back onto the original's frame.

        It is resized to the box and pasted at the box's place on ``background`` (default: a black
        canvas the size of the original, in ``picture``'s mode); the result has the original's size.
        """
        left, top, right, bottom = self.box
        canvas = (background.convert(picture.mode).copy() if background is not None
                  else Image.new(picture.mode, self.image.size))
        if canvas.size != self.image.size:
            canvas = canvas.resize(self.image.size, Image.Resampling.BILINEAR)
        canvas.paste(picture.resize((right - left, bottom - top), Image.Resampling.BILINEAR), (left, top))
        return canvas


#: Largest model input side and resize target: beyond them a typo (224 → 224000) would exhaust memory.
MAX_INPUT_SIZE = 4096
MAX_RESIZE = 8192


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, centre-crop ``crop`` × ``crop``, normalise.

    ``resize=None`` resizes the shorter side straight to ``crop``. ``channels``: 3 (RGB) or 1
    (grayscale). ``mean``/``std`` hold one value per channel, applied after scaling to [0, 1].
    ``dtype``: the tensor's (default float32, the array's).
    """

    crop: int
    resize: int | None = None
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channels: int = 3
    interpolation: str = "bilinear"
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.crop <= MAX_INPUT_SIZE:
            raise ValueError(f"the input size (crop) must be from 1 to {MAX_INPUT_SIZE} pixels, got {self.crop}")
        if self.resize is not None and self.resize > MAX_RESIZE:
            raise ValueError(f"resize must be at most {MAX_RESIZE} pixels, got {self.resize}")
        if self.resize is not None and self.resize < self.crop:
            raise ValueError(f"resize ({self.resize}) must be at least the crop ({self.crop})")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        object.__setattr__(self, "mean", _per_channel(self.mean, self.channels, "mean"))
        object.__setattr__(self, "std", _per_channel(self.std, self.channels, "std"))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if self.interpolation not in _RESAMPLING:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLING)}, got {self.interpolation!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one prepared input."""
        return (self.channels, self.crop, self.crop)

    def prepare(self, image: Image.Image) -> Prepared:
        """The model input for ``image`` (an upright PIL picture; converted to RGB if needed)."""
        import torch

        array, original, box = self.to_array(image)
        tensor = torch.from_numpy(array[None])
        return Prepared(tensor=tensor if self.dtype is None else tensor.to(self.dtype), image=original, box=box)

    def to_array(self, image: Image.Image) -> tuple[np.ndarray, Image.Image, Box]:
        """:meth:`prepare` in numpy: the input ``[C, H, W]`` as float32, the RGB original, and the box."""
        if not isinstance(image, Image.Image):
            raise ImageError(f"expected a PIL image, got {type(image).__name__}; "
                             "decode files with saliency.images.open_image")
        original = image if image.mode == "RGB" else image.convert("RGB")
        width, height = original.size
        scale = (self.resize or self.crop) / min(width, height)
        new_w, new_h = max(self.crop, round(width * scale)), max(self.crop, round(height * scale))
        left, top = (new_w - self.crop) // 2, (new_h - self.crop) // 2
        # The crop in original pixels; resizing that region straight to crop × crop is the same
        # picture as resize-then-crop, and keeps the box and the tensor exactly consistent.
        box = _round_box((left * width / new_w, top * height / new_h,
                          (left + self.crop) * width / new_w, (top + self.crop) * height / new_h),
                         original.size)
        pixels = original.resize((self.crop, self.crop), _RESAMPLING[self.interpolation], box=box)
        if self.channels == 1:
            pixels = pixels.convert("L")
        # numpy, not torch: torch's CPU ops open a team of OpenMP threads (one per core) in every calling
        # thread, and a batch job prepares pictures in many threads at once
        array = np.asarray(pixels, dtype=np.float32).reshape(self.crop, self.crop, self.channels)
        normalised = (array / np.float32(255.0) - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1)), original, box

    def prepare_many(self, images: Sequence[Image.Image]) -> tuple[Tensor, list[Prepared]]:
        """A batch ``[B, C, H, W]`` and the :class:`Prepared` of each picture, in order."""
        import torch

        if len(images) == 0:
            raise InputError("no images to prepare; pass at least one")
        prepared = [self.prepare(image) for image in images]
        return torch.cat([p.tensor for p in prepared]), prepared

    def unnormalise(self, tensor: Tensor) -> Tensor:
        """Invert the normalisation: a ``[.., C, H, W]`` model input back to [0, 1] pixels."""
        import torch

        mean = torch.tensor(self.mean, dtype=tensor.dtype, device=tensor.device)[:, None, None]
        std = torch.tensor(self.std, dtype=tensor.dtype, device=tensor.device)[:, None, None]
        return (tensor * std + mean).clamp(0.0, 1.0)


def _per_channel(values: float | Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    items = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(items) == 1:
        items = items * channels
    if len(items) != channels:
        raise ValueError(f"{what} needs 1 or {channels} values, got {len(items)}")
    return items


def _round_box(box: tuple[float, float, float, float], size: tuple[int, int]) -> Box:
    width, height = size
    left, top = max(0, round(box[0])), max(0, round(box[1]))
    right, bottom = min(width, max(left + 1, round(box[2]))), min(height, max(top + 1, round(box[3])))
    return (left, top, right, bottom)
