"""Units: one channel of a named layer, or one position of it, as the target an explanation follows.

A :class:`Unit` names a layer by its dotted module name and reads that module's own output ``A``
(as Grad-CAM reads it: later in-place ops change a copy). Its value in sample ``b``:

- a channel, ``Unit("features.28", 12)`` or ``"features.28:12"``: ``Σ_ij A[b, 12, i, j]``;
- a position, ``Unit("features.28", 12, (7, 9))`` or ``"features.28:12@7,9"``: ``A[b, 12, 7, 9]``;
- the strongest position, ``Unit("features.28", 12, "max")`` or ``"features.28:12@max"``:
  ``A[b, 12, i_b, j_b]`` with ``(i_b, j_b) = argmax_ij A[b, 12, i, j]`` — each sample its own
  position (the first, in row-major order, where several tie). Its gradient is the projection of
  that one activation with every other activation of the layer set to zero (Zeiler & Fergus 2014).

A layer returning ``[batch, channels]`` (a linear layer) has channel units only: ``"classifier.4:17"``.
This module imports no torch until a unit meets a tensor.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from saliency.errors import TargetError

if TYPE_CHECKING:
    from torch import Tensor, nn

Position = Union[tuple[int, int], str, None]
"""``None`` (the whole channel), ``(row, column)``, or ``"max"`` (each sample's strongest position)."""

FORM = "LAYER:CHANNEL, LAYER:CHANNEL@ROW,COL or LAYER:CHANNEL@max (e.g. features.28:12@max)"
_NUMBER = re.compile(r"\s*\d+\s*")


@dataclass(frozen=True)
class Unit:
    """A channel of layer ``layer`` (a dotted module name), or one ``position`` of it; ``str(unit)`` is its string form."""

    layer: str
    channel: int
    position: Position = None

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer.strip():
            raise TargetError(f"a unit needs a layer name, got {self.layer!r}; write {FORM}")
        if isinstance(self.channel, bool) or not isinstance(self.channel, int) or self.channel < 0:
            raise TargetError(f"a unit's channel must be a whole number of at least 0, got {self.channel!r}")
        position = self.position
        if isinstance(position, list):
            position = tuple(position)
        if not (position is None or position == "max" or _is_row_col(position)):
            raise TargetError(f"a unit's position must be (row, column) of whole numbers of at least 0 or 'max', "
                              f"got {self.position!r}")
        object.__setattr__(self, "position", position)

    def __str__(self) -> str:
        where = "" if self.position is None else "@max" if self.position == "max" else "@{},{}".format(*self.position)
        return f"{self.layer}:{self.channel}{where}"

    @classmethod
    def parse(cls, text: str) -> Unit:
        """The unit a string names: ``LAYER:CHANNEL``, ``LAYER:CHANNEL@ROW,COL`` or ``LAYER:CHANNEL@max``."""
        shown = text if len(text) <= 60 else text[:40] + "..."
        head, at, where = text.strip().partition("@")
        layer, colon, channel = head.rpartition(":")
        if not colon or not layer.strip():
            raise TargetError(f"{shown!r} is not a unit: write {FORM}")
        if not _NUMBER.fullmatch(channel):
            raise TargetError(f"unit {shown!r}: the channel must be a whole number, got {channel.strip()!r}; "
                              f"write {FORM}")
        position: Position = None
        if at:
            parts = where.split(",")
            if where.strip().lower() == "max":
                position = "max"
            elif len(parts) == 2 and all(_NUMBER.fullmatch(p) for p in parts):
                position = (int(parts[0]), int(parts[1]))
            else:
                raise TargetError(f"unit {shown!r}: after '@' give ROW,COL (whole numbers) or max, got {where!r}")
        return cls(layer.strip(), int(channel), position)

    # --- on a forward pass's tensors ---------------------------------------------------------

    def check(self, activation: object) -> None:
        """Raise :class:`TargetError` unless ``activation`` (the layer's output) has this unit."""
        import torch

        if not isinstance(activation, torch.Tensor) or activation.dim() not in (2, 4):
            shape = list(activation.shape) if isinstance(activation, torch.Tensor) else type(activation).__name__
            raise TargetError(f"unit {self}: layer {self.layer!r} returns {shape}; a unit needs a layer that returns "
                              "[batch, channels, height, width] (a convolution) or [batch, channels] (a linear layer)")
        channels = activation.shape[1]
        if self.channel >= channels:
            raise TargetError(f"unit {self}: channel {self.channel} is out of range: layer {self.layer!r} has "
                              f"{channels} channels (0..{channels - 1})")
        if activation.dim() == 2 and self.position is not None:
            raise TargetError(f"unit {self}: layer {self.layer!r} returns [batch, channels] = "
                              f"{list(activation.shape)}, which has no positions; name the unit as "
                              f"'{self.layer}:{self.channel}'")
        if _is_row_col(self.position):
            rows, cols = activation.shape[2:]
            row, col = self.position
            if row >= rows or col >= cols:
                raise TargetError(f"unit {self}: position ({row}, {col}) is outside the {rows}×{cols} map of layer "
                                  f"{self.layer!r} (rows 0..{rows - 1}, columns 0..{cols - 1})")
        if not activation.requires_grad:
            raise TargetError(f"unit {self}: layer {self.layer!r}'s output carries no gradient (it runs under "
                              "torch.no_grad()); name a layer that the input's gradient flows through")

    def locate(self, activation: Tensor) -> Tensor | None:
        """Each sample's flat index into the channel's map (``row · width + column``), ``[B]``; ``None`` for a channel."""
        import torch

        if self.position is None:
            return None
        plane = activation.detach()[:, self.channel].flatten(1)
        if self.position == "max":
            return plane.argmax(dim=1)
        row, col = self.position
        return torch.full((len(plane),), row * activation.shape[3] + col, dtype=torch.long, device=plane.device)

    def value(self, activation: Tensor, index: Tensor | None) -> Tensor:
        """The unit in each sample, ``[B]``: the channel's sum, or its value at ``index`` (from :meth:`locate`)."""
        plane = activation[:, self.channel]
        if plane.dim() == 1:
            return plane
        plane = plane.flatten(1)
        return plane.sum(dim=1) if index is None else plane.gather(1, index[:, None].to(plane.device))[:, 0]


@dataclass(frozen=True, eq=False)
class Placed:
    """A unit whose position in each sample is settled: ``index`` ``[B]`` flat indices (``None``: the whole channel).

    What copies of a batch (SmoothGrad's noisy ones, Integrated Gradients' path) explain: the
    position chosen on the images themselves, not again on each copy.
    """

    unit: Unit
    index: Tensor | None

    def repeat(self, copies: int) -> Placed:
        """The same unit for ``copies`` copies of the batch stacked one after another."""
        return self if self.index is None else Placed(self.unit, self.index.repeat(copies))

    def positions(self, activation: Tensor) -> Tensor | None:
        """``[B, 2]`` (row, column) of the unit in each sample, or ``None`` for a whole channel."""
        import torch

        if self.index is None:
            return None
        width = activation.shape[3]
        return torch.stack([self.index // width, self.index % width], dim=1)


def as_target(target: object) -> object:
    """A target as :func:`saliency.explain` takes it: a string names a unit; anything else is returned as is."""
    return Unit.parse(target) if isinstance(target, str) else target


def looks_like_unit(text: str) -> bool:
    """Whether a target string is meant as a unit (it holds a ``:``), not a class label or index."""
    return ":" in text


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``model``, or a :class:`TargetError` naming close module names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = (f"did you mean {' or '.join(map(repr, close))}?" if close
                else f"its layers include {', '.join(names[:6])}" if names else "it has no named layers")
        raise TargetError(f"the model has no layer {name!r}; {hint} (dotted module names, as in "
                          "model.named_modules())") from None


def _is_row_col(position: object) -> bool:
    return (isinstance(position, tuple) and len(position) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in position))
