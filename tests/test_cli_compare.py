"""Method comparison: similarity numbers with known answers, the figure's panels, the table."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from saliency.compare import (Panel, comparison_figure, figure_png, format_table, magnitude, similarities,
                              spearman)


def test_spearman_is_one_for_monotone_and_minus_one_for_reversed_orders():
    x = np.array([3.0, 1.0, 4.0, 1.5, 9.0, 2.6])
    assert spearman(x, 2 * x ** 3 + 1) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def test_spearman_gives_ties_their_average_rank():
    # ranks of a: 1, 2.5, 2.5, 4; ranks of b: 1, 2, 3, 4 -> Pearson of the ranks
    a, b = np.array([0.0, 1.0, 1.0, 5.0]), np.array([1.0, 2.0, 3.0, 4.0])
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4.0])
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    assert math.isnan(spearman(np.zeros(4), b))


def test_similarities_compare_the_abs_max_over_channels_maps():
    a = torch.randn(3, 5, 5)
    maps = {"x": a, "y": -a, "z": torch.randn(3, 5, 5)}
    table = similarities(maps)
    assert table["x", "y"] == pytest.approx(1.0)          # the sign is ignored
    assert table["x", "z"] == table["z", "x"]
    assert table["z", "z"] == 1.0
    np.testing.assert_allclose(magnitude(a), a.abs().amax(0).numpy())


def test_table_lists_each_method_with_its_time_and_similarities():
    names = ["vanilla", "guided"]
    text = format_table(names, {"vanilla": 0.0123, "guided": 0.002},
                        {("vanilla", "vanilla"): 1.0, ("guided", "guided"): 1.0,
                         ("vanilla", "guided"): 0.5, ("guided", "vanilla"): 0.5})
    lines = text.splitlines()
    assert lines[0].split() == ["method", "time", "~vanilla", "~guided"]
    assert lines[1].split() == ["vanilla", "12.3", "ms", "1.00", "0.50"]
    assert lines[2].split() == ["guided", "2.0", "ms", "0.50", "1.00"]


def test_figure_has_one_labelled_panel_per_picture_and_renders_to_png():
    pictures = [Image.new("RGB", (16, 16), c) for c in ("red", "green", "blue", "black")]
    fig = comparison_figure([Panel(p, f"title {i}", "1 ms") for i, p in enumerate(pictures)],
                            title="top", footnote="note")
    panels = [ax for ax in fig.axes if ax.get_label() == "panel"]
    assert len(panels) == 4
    assert [ax.get_title() for ax in panels] == [f"title {i}\n1 ms" for i in range(4)]
    image = Image.open(io.BytesIO(figure_png(fig)))
    assert image.format == "PNG" and image.width > 2 * image.height
