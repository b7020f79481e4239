"""Show an :class:`~saliency.evaluation.runner.Evaluation`: tables (text and Markdown), plots, JSON."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from saliency.evaluation.checks import CHECKS
from saliency.evaluation.localization import BASELINES
from saliency.evaluation.runner import Evaluation
from saliency.evaluation.similarity import METRICS

RESULTS_FILE = "results.json"
TABLES_FILE = "tables.md"
_SHORT = {"spearman_abs": "rank |map|", "spearman_signed": "rank signed", "ssim": "SSIM |map|"}
UNDEFINED = "-"
UNDEFINED_NOTE = (f"{UNDEFINED}: undefined: every map it averages was constant (all zero, for instance), "
                  "where a correlation or a share of the map does not exist.")


@dataclass(frozen=True)
class Table:
    """A titled table of strings with notes under it."""

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: tuple[str, ...] = ()

    @property
    def all_notes(self) -> tuple[str, ...]:
        """The notes, and what an undefined cell means if the table has one."""
        undefined = any(cell == UNDEFINED for row in self.rows for cell in row[1:])
        return self.notes + ((UNDEFINED_NOTE,) if undefined else ())

    def text(self) -> str:
        """Aligned plain text: first column left, numbers right."""
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]
        lines = [self.title, "-" * len(self.title)]
        for row in [self.header, *self.rows]:
            cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines + list(self.all_notes))

    def markdown(self) -> str:
        """A Markdown table under a level-3 heading, notes as a paragraph."""
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join([" --- "] + [" ---: "] * (len(self.header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.all_notes:
            lines += [""] + [" ".join(self.all_notes)]
        return "\n".join(lines)


def tables(evaluation: Evaluation) -> list[Table]:
    """One or more tables per check run, in the order they ran."""
    found: list[Table] = []
    for check, parts in evaluation.results.items():
        found += _TABLES[check](parts)
    return found


def text_report(evaluation: Evaluation) -> str:
    """Every table as plain text, then the skipped checks with their reasons."""
    blocks = [t.text() for t in tables(evaluation)]
    blocks += [f"skipped {name}: {reason}" for name, reason in evaluation.skipped.items()]
    return "\n\n".join(blocks)


def markdown_report(evaluation: Evaluation) -> str:
    """A Markdown page: settings, every table, skipped checks."""
    head = [f"# Evaluation of model `{evaluation.model}`", "",
            f"Weights: {evaluation.weights}. Methods: {', '.join(evaluation.methods)}. "
            f"{evaluation.n_images} shapes images, seed {evaluation.seed}. "
            + ", ".join(f"{k.replace('_', ' ')}: {v:.2f}" for k, v in evaluation.predictions.items()) + "."]
    body = [t.markdown() for t in tables(evaluation)]
    body += [f"Skipped **{name}**: {reason}." for name, reason in evaluation.skipped.items()]
    return "\n\n".join(["\n".join(head), *body]) + "\n"


def results_json(evaluation: Evaluation, files: Sequence[str] = ()) -> bytes:
    """``results.json`` content: :meth:`Evaluation.to_dict` with ``NaN`` written as ``null``, and
    ``files``, the names of the files written with it (when given)."""
    data = evaluation.to_dict() | ({"files": list(files)} if files else {})
    return (json.dumps(_finite(data), indent=1, allow_nan=False) + "\n").encode()


def write_all(evaluation: Evaluation, out: str | Path) -> list[Path]:
    """Write ``results.json``, ``tables.md`` and one PNG per check into ``out``, as one set.

    Every file is written into a temporary folder inside ``out`` first and moved into place only
    when all are there, so an interrupted run leaves an older run's files as they were rather than
    a mix of both. ``results.json`` lists the files of its run.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saliency-eval-", dir=folder))
    try:
        pictures = {f"{name}.png": figure_png(figure, dpi=72 if name.endswith("maps") else 80)
                    for name, figure in figures(evaluation).items()}
        names = [RESULTS_FILE, TABLES_FILE, *pictures]
        contents = {RESULTS_FILE: results_json(evaluation, files=names),
                    TABLES_FILE: markdown_report(evaluation).encode(), **pictures}
        for name, data in contents.items():
            (staging / name).write_bytes(data)
        for name in names:
            os.replace(staging / name, folder / name)
        return [folder / name for name in names]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def figures(evaluation: Evaluation) -> dict[str, Figure]:
    """Plots by file stem: each check's curves or bars, and the randomisation example maps."""
    found: dict[str, Figure] = {}
    for check, parts in evaluation.results.items():
        found.update(_FIGURES[check](parts))
    if "cascading" in evaluation.results.get("randomisation", {}):
        found["randomisation-maps"] = _example_maps(evaluation.results["randomisation"]["cascading"],
                                                    evaluation.example_image)
    return found


def figure_png(fig: Figure, dpi: int = 80, colors: int = 128) -> bytes:
    """PNG bytes of a figure (Agg canvas, no pyplot state), reduced to a palette of ``colors``
    colours (no dithering) so the committed examples stay small."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    picture = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    small = io.BytesIO()
    palette = picture.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(small, "PNG", optimize=True)
    return small.getvalue()


# --- tables ------------------------------------------------------------------------------------

def _randomisation_tables(parts: dict) -> list[Table]:
    out = []
    for mode, curve in parts.items():
        numbered = [f"{i + 1}" for i in range(len(curve.steps))]
        compared = len(curve.targets) * len(curve.steps)
        rows = [[m] + [_num(v) for v in curve.mean[m]["spearman_abs"]]
                + [f"{sum(curve.left_out.get(m, ()))}/{compared}"] for m in curve.mean]
        rows.append(["noise (baseline)"] + [_num(curve.baseline["spearman_abs"])] * len(numbered) + [""])
        what = ("blocks 1..i re-initialised, from the logits down" if mode == "cascading"
                else "only block i re-initialised")
        out.append(Table(
            f"Randomisation, {mode}: Spearman rank correlation of |map| with the trained model's map",
            ["method"] + numbered + ["left out"], rows,
            (f"Column i: {what}. Blocks: " + ", ".join(f"{i + 1} {name}" for i, name in enumerate(curve.steps)) + ".",
             "1 = unchanged map (the method ignores the weights); near the noise row = the map changed completely.",
             f"left out: of the {compared} image × step comparisons, those where a map was constant (all zero, "
             "as Grad-CAM's can be), left out of the means; a mean over fewer maps moves more with --seed.")))
    if "cascading" in parts:
        cascade, independent = parts["cascading"], parts.get("independent")
        header = ["method"] + [f"all random: {_SHORT[k]}" for k in METRICS]
        if independent is not None:
            header += [f"one block: {_SHORT[k]}" for k in METRICS]
        rows = []
        for m in cascade.mean:
            row = [m] + [_num(cascade.mean[m][k][-1]) for k in METRICS]
            if independent is not None:
                row += [_num(_mean(independent.mean[m][k])) for k in METRICS]
            rows.append(row)
        rows.append(["noise (baseline)"] + [_num(cascade.baseline[k]) for k in METRICS] * (2 if independent else 1))
        out.append(Table("Randomisation summary: similarity to the trained model's map", header, rows,
                         ("all random: after the cascade reached the input layer; one block: mean over the "
                          "independent steps. Lower = the map depends on the weights, as it should.",)))
    return out


def _class_tables(parts: dict) -> list[Table]:
    out = []
    sens = parts.get("class_sensitivity")
    if sens is not None:
        rows = [[m] + [_num(v[k]) for k in METRICS] for m, v in sens.scores.items()]
        rows.append(["noise (baseline)"] + [_num(sens.baseline[k]) for k in METRICS])
        out.append(Table("Class sensitivity: predicted class's map vs other classes' maps",
                         ["method"] + [_SHORT[k] for k in METRICS], rows,
                         (f"Mean over {sens.n} images × {sens.other_classes} other classes. "
                          "1 = the same map whatever the class (class-insensitive).",)))
    rec = parts.get("image_recovery")
    if rec is not None:
        methods = list(next(iter(rec.scores.values())))
        rows = [[m] + [_num(rec.scores[net][m]) for net in rec.scores] for m in methods]
        rows.append(["noise (baseline)"] + [_num(rec.baseline[net]) for net in rec.scores])
        out.append(Table("Image recovery on random networks: correlation of the map with the input",
                         ["method"] + list(rec.scores), rows,
                         (f"Pearson correlation of the signed map with the centred input, {rec.n} images; "
                          + "; ".join(f"{k}: {v}" for k, v in rec.networks.items())
                          + ". High = the map reproduces the image although the network learned nothing.",)))
    return out


def _localisation_tables(parts: dict) -> list[Table]:
    s = parts["scores"]
    rows = [[name, _num(s.pointing[name]), _num(s.mass[name])] for name in s.pointing]
    for row in rows:
        if row[0] in s.baselines:
            row[0] += " (baseline)"
    return [Table("Localisation on the shapes masks", ["map", "pointing game", "relevance mass"], rows,
                  (f"{s.n} images; pointing tolerance {s.tolerance:g} px; the masks cover {s.mask_fraction:.0%} "
                   "of the image on average (the relevance mass of an evenly spread map). Higher is better.",))]


def _faithfulness_tables(parts: dict) -> list[Table]:
    s = parts["scores"]
    rows = [[name + (" order (baseline)" if name == "random" else ""), _num(s.auc["deletion"][name], small=True),
             _num(s.auc["insertion"][name], small=True)] for name in s.auc["deletion"]]
    return [Table("Faithfulness: area under the deletion and insertion curves",
                  ["method", "deletion AUC (lower better)", "insertion AUC (higher better)"], rows,
                  (f"{s.n} images, {s.steps} steps; probability of the explained class. Deletion sets pixels to "
                   "the data mean, insertion restores them into a blurred copy.",))]


_TABLES = {"randomisation": _randomisation_tables, "class-sensitivity": _class_tables,
           "localisation": _localisation_tables, "faithfulness": _faithfulness_tables}
assert set(_TABLES) == set(CHECKS)


# --- figures -----------------------------------------------------------------------------------

def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _randomisation_figures(parts: dict) -> dict[str, Figure]:
    modes = list(parts)
    fig = _figure(4.0 * len(METRICS), 3.4 * len(modes))
    axes = fig.subplots(len(modes), len(METRICS), squeeze=False)
    for row, mode in enumerate(modes):
        curve = parts[mode]
        labels = ["trained"] + curve.steps
        for col, key in enumerate(METRICS):
            ax = axes[row, col]
            for m in curve.mean:
                ax.plot(range(len(labels)), [1.0] + curve.mean[m][key], marker="o", markersize=3, label=m)
            ax.axhline(curve.baseline[key], color="0.5", linestyle="--", linewidth=1, label="noise")
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
            lowest = min([curve.baseline[key]] + [v for m in curve.mean for v in curve.mean[m][key] if v == v])
            ax.set_ylim(min(-0.1, lowest - 0.05), 1.05)
            ax.set_title(f"{mode}: {_SHORT[key]}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Similarity to the trained model's map as layers are randomised (logits → input)", fontsize=10)
    return {"randomisation": fig}


def _example_maps(curve, image: np.ndarray | None = None) -> Figure:
    """Adebayo et al.'s figure: one row per method, the trained map then each cascading step."""
    methods = list(curve.example)
    labels = ["trained"] + curve.steps
    shift = 1 if image is not None else 0
    fig = _figure(1.1 * (len(labels) + shift) + 0.8, 1.1 * len(methods) + 0.6)
    axes = fig.subplots(len(methods), len(labels) + shift, squeeze=False)
    if image is not None:
        for r in range(len(methods)):
            axes[r, 0].axis("off")
        axes[0, 0].imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, interpolation="nearest")
        axes[0, 0].set_title("input", fontsize=6)
    for r, m in enumerate(methods):
        for c, picture in enumerate(curve.example[m]):
            ax = axes[r, c + shift]
            top = float(np.percentile(picture, 99)) or 1.0
            ax.imshow(np.clip(picture / top, 0, 1), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(labels[c], fontsize=6, rotation=30)
            if c == 0:
                ax.set_ylabel(m, fontsize=6)
    fig.suptitle("Cascading randomisation, first image: |map| (each scaled to its 99th percentile)", fontsize=9)
    return fig


def _class_figures(parts: dict) -> dict[str, Figure]:
    panels = [p for p in ("class_sensitivity", "image_recovery") if p in parts]
    fig = _figure(5.0 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, part in zip(axes, panels):
        result = parts[part]
        if part == "class_sensitivity":
            groups = {_SHORT[k]: {m: v[k] for m, v in result.scores.items()} for k in METRICS}
            _bars(ax, groups, {_SHORT[k]: result.baseline[k] for k in METRICS})
            ax.set_title("class sensitivity: top class vs other classes\n(1 = class-insensitive)", fontsize=9)
        else:
            _bars(ax, result.scores, result.baseline)
            ax.set_title("image recovery on random networks\n(correlation of map with input)", fontsize=9)
    return {"class-sensitivity": fig}


def _localisation_figures(parts: dict) -> dict[str, Figure]:
    s = parts["scores"]
    fig = _figure(5.5, 3.4)
    ax = fig.subplots()
    _bars(ax, {"pointing game": s.pointing, "relevance mass": s.mass}, {})
    ax.axhline(s.mask_fraction, color="0.5", linestyle=":", linewidth=1)
    ax.set_title(f"localisation on {s.n} shapes images (tolerance {s.tolerance:g} px; dotted: mask share)",
                 fontsize=9)
    return {"localisation": fig}


def _faithfulness_figures(parts: dict) -> dict[str, Figure]:
    s = parts["scores"]
    fractions = np.linspace(0, 1, s.steps + 1)
    fig = _figure(9.0, 3.4)
    for ax, mode in zip(fig.subplots(1, 2), ("deletion", "insertion")):
        for name, curve in s.curves[mode].items():
            style = {"color": "0.4", "linestyle": "--"} if name == "random" else {}
            ax.plot(fractions, curve, label=f"{name} ({s.auc[mode][name]:.2f})", **style)
        ax.set_xlabel(f"fraction of pixels {'deleted' if mode == 'deletion' else 'inserted'}", fontsize=8)
        ax.set_ylabel("probability of the explained class", fontsize=8)
        ax.set_title(f"{mode} ({'lower' if mode == 'deletion' else 'higher'} area is better)", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return {"faithfulness": fig}


def _bars(ax, groups: dict[str, dict[str, float]], baselines: dict[str, float]) -> None:
    """Grouped bars: one group per key of ``groups``, one bar per method; baselines as grey ticks."""
    names = list(next(iter(groups.values())))
    width = 0.8 / len(names)
    greys = iter(("0.55", "0.8"))
    for i, name in enumerate(names):
        values = [_zero_nan(groups[g][name]) for g in groups]
        style = {"color": next(greys, "0.7"), "hatch": "//"} if name in BASELINES else {}
        ax.bar(np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width, values, width, label=name, **style)
    for j, group in enumerate(groups):
        if group in baselines:
            ax.hlines(baselines[group], j - 0.45, j + 0.45, colors="0.3", linestyles="--", linewidth=1)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.axhline(0, color="0.2", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=6, ncol=min(4, len(names)), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)


_FIGURES = {"randomisation": _randomisation_figures, "class-sensitivity": _class_figures,
            "localisation": _localisation_figures, "faithfulness": _faithfulness_figures}


# --- helpers -----------------------------------------------------------------------------------

def _num(value: float, small: bool = False) -> str:
    """Two decimals; with ``small``, two significant digits below 0.1 (probabilities among 1000 classes)."""
    if value is None or math.isnan(value):
        return UNDEFINED
    return f"{value:.2g}" if small and 0 < abs(value) < 0.1 else f"{value:.2f}"


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _zero_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value
