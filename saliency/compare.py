"""Compare methods on one picture: how similar their maps are, and one figure with a panel each."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

SIMILARITY = "Spearman rank correlation of the max-over-channels |attribution| maps"
PANEL_LABEL = "panel"


@dataclass(frozen=True)
class Panel:
    """One picture of the figure with its two-line caption."""

    picture: Image.Image
    title: str
    caption: str = ""


def magnitude(attribution: torch.Tensor | np.ndarray) -> np.ndarray:
    """Max over channels of ``|attribution|`` (``[C, H, W]`` -> ``[H, W]``), unclipped."""
    a = attribution.detach().cpu().float().numpy() if isinstance(attribution, torch.Tensor) else np.asarray(attribution)
    return np.abs(a).max(axis=0)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two same-shaped arrays (ties get their average rank).

    ``nan`` when either array is constant, where a rank correlation is undefined.
    """
    ra, rb = _ranks(np.ravel(a)), _ranks(np.ravel(b))
    if ra.size != rb.size:
        raise ValueError(f"cannot correlate arrays of {ra.size} and {rb.size} values")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / norm) if norm > 0 else float("nan")


def similarities(maps: Mapping[str, torch.Tensor | np.ndarray]) -> dict[tuple[str, str], float]:
    """:func:`spearman` of the |maps| of every pair of methods, both orders, 1.0 on the diagonal."""
    mags = {name: magnitude(a) for name, a in maps.items()}
    out: dict[tuple[str, str], float] = {}
    names = list(mags)
    for i, a in enumerate(names):
        out[a, a] = 1.0
        for b in names[i + 1:]:
            out[a, b] = out[b, a] = spearman(mags[a], mags[b])
    return out


def format_table(names: Sequence[str], seconds: Mapping[str, float],
                 similarity: Mapping[tuple[str, str], float]) -> str:
    """A plain-text table: method, backward time, and similarity to each method."""
    header = ["method", "time"] + [f"~{n}" for n in names]
    rows = [[n, _milliseconds(seconds.get(n))] + [_number(similarity[n, m]) for m in names] for n in names]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    return "\n".join(lines).rstrip()


def comparison_figure(panels: Sequence[Panel], title: str = "", footnote: str = "",
                      panel_inches: float | None = None, colorbar: tuple[str, str] | None = None) -> Figure:
    """A one-row figure, one axes per panel (each labelled ``"panel"``), title on top, note below.

    ``colorbar``: ``(cmap, label)`` adds a colour scale from 0 to 1 under the panels.
    """
    n = len(panels)
    panel_inches = panel_inches or (3.0 if n <= 5 else 2.4)
    width, height = panels[0].picture.size
    aspect = min(max(height / width, 0.3), 3.0)
    extra = 1.1 + (0.6 if colorbar else 0.0)
    fig = Figure(figsize=(panel_inches * n, panel_inches * aspect + extra), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        ax.set_label(PANEL_LABEL)
        ax.imshow(np.asarray(panel.picture.convert("RGB")), interpolation="antialiased")
        ax.set_title(f"{panel.title}\n{panel.caption}" if panel.caption else panel.title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if colorbar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        cmap, label = colorbar
        bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), ax=list(axes), orientation="horizontal",
                           location="bottom", fraction=0.06, shrink=0.5, aspect=40)
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    if footnote:
        fig.supxlabel(footnote, fontsize=8, color="0.3")
    return fig


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure (Agg backend, no window, no global pyplot state)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    rgb = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")  # opaque: a third smaller
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _ranks(x: np.ndarray) -> np.ndarray:
    ordered = np.sort(x)
    return (np.searchsorted(ordered, x, "left") + np.searchsorted(ordered, x, "right") - 1) / 2.0


def _milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _number(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.2f}"
