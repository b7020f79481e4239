"""Rendering on hand-made attributions whose pictures are known in advance."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from saliency import render
from saliency.errors import InputError, SaliencyError


def _prepared(image: Image.Image, box: tuple[int, int, int, int]):
    from saliency.preprocess import Prepared

    left, top, right, bottom = box
    tensor = torch.zeros(1, 3, bottom - top, right - left)
    return Prepared(tensor=tensor, image=image, box=box)


def test_grayscale_is_max_over_channels_of_abs_scaled_by_the_maximum():
    a = torch.zeros(3, 2, 2)
    a[0, 0, 0], a[1, 0, 0] = -4.0, 1.0   # |-4| beats 1 in another channel
    a[2, 0, 1] = 2.0
    a[1, 1, 0] = -1.0
    gray = render.grayscale(a, percentile=100)
    np.testing.assert_allclose(gray, [[1.0, 0.5], [0.25, 0.0]])
    assert gray.dtype == np.float32


def test_grayscale_clips_at_the_percentile():
    a = torch.arange(1.0, 101.0).reshape(1, 10, 10)   # values 1..100 on one channel
    gray = render.grayscale(a, percentile=50)           # 50th percentile of 1..100 is 50.5
    assert gray.max() == 1.0
    assert (gray == 1.0).sum() == 50                    # 51..100 are clipped
    np.testing.assert_allclose(gray.ravel()[0], 1 / 50.5, rtol=1e-6)


def test_grayscale_of_a_sparse_map_falls_back_to_the_maximum_and_zero_stays_zero():
    a = torch.zeros(3, 10, 10)
    a[1, 3, 4] = -7.0              # 99th percentile is 0: scale by the maximum instead
    gray = render.grayscale(a)
    assert gray[3, 4] == 1.0 and gray.sum() == 1.0
    assert not render.grayscale(torch.zeros(3, 4, 4)).any()


def test_signed_rgb_maps_zero_to_grey_and_signs_to_bright_and_dark():
    a = torch.zeros(3, 2, 2)
    a[0, 0, 0] = 2.0
    a[1, 0, 1] = -2.0
    a[2, 1, 1] = 1.0
    rgb = render.signed_rgb(a, percentile=100)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[1, 0], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(rgb[0, 0], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(rgb[0, 1], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(rgb[1, 1], [0.5, 0.5, 0.75])


def test_signed_rgb_repeats_a_single_channel_and_rejects_other_channel_counts():
    rgb = render.signed_rgb(torch.tensor([[[1.0, -1.0]]]), percentile=100)
    np.testing.assert_allclose(rgb, [[[1.0] * 3, [0.0] * 3]])
    with pytest.raises(InputError, match="1 or 3 channels"):
        render.signed_rgb(torch.ones(4, 2, 2))


def test_batches_are_normalised_per_sample_like_single_maps():
    batch = torch.randn(3, 3, 6, 5)
    batch[1] *= 1000.0
    gray = render.grayscale(batch)
    rgb = render.signed_rgb(batch)
    for i in range(3):
        np.testing.assert_allclose(gray[i], render.grayscale(batch[i]), rtol=1e-6)
        np.testing.assert_allclose(rgb[i], render.signed_rgb(batch[i]), rtol=1e-6)
    pictures = render.render_batch(batch, "heatmap")
    assert [np.asarray(p).tolist() for p in pictures] == [np.asarray(render.render(b)).tolist() for b in batch]


def test_attributions_that_still_require_grad_are_accepted():
    a = torch.randn(3, 4, 4, requires_grad=True)
    np.testing.assert_allclose(render.grayscale(a), render.grayscale(a.detach()))
    assert render.render(a, "rgb").size == (4, 4)


def test_colorize_uses_the_matplotlib_colormap():
    values = np.array([[0.0, 1.0]])
    np.testing.assert_array_equal(render.colorize(values, "gray"), [[[0, 0, 0], [255, 255, 255]]])
    inferno = render.colorize(values, "inferno")
    assert inferno.dtype == np.uint8 and inferno.shape == (1, 2, 3)
    assert inferno[0, 0].sum() < 30 and inferno[0, 1].sum() > 600    # dark at 0, bright at 1
    with pytest.raises(InputError, match="unknown colormap 'nope'"):
        render.colorize(values, "nope")


def test_heatmap_picture_matches_the_grayscale_map():
    a = torch.zeros(3, 4, 4)
    a[0, 1, 2] = 5.0
    picture = render.render(a, "heatmap", cmap="gray", percentile=100)
    assert picture.mode == "P" and picture.size == (4, 4)
    pixels = np.asarray(picture.convert("RGB"))
    assert pixels[1, 2].tolist() == [255, 255, 255]
    assert pixels.sum() == 3 * 255


def test_heatmap_is_a_lossless_palette_picture_of_the_colour_map():
    """An 8-bit value through the colour map's 256 entries: the palette PNG shows exactly colorize's colours,
    in a smaller file than the same picture in RGB."""
    a = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0)).cumsum(1).cumsum(2)
    picture = render.render(a, "heatmap", cmap="inferno")
    expected = render.colorize(render.grayscale(a), "inferno")
    decoded = Image.open(io.BytesIO(render.to_png(picture)))
    assert decoded.mode == "P"
    assert np.array_equal(np.asarray(decoded.convert("RGB")), expected)
    assert len(render.to_png(picture)) < len(render.to_png(picture.convert("RGB")))


def test_heatmap_and_rgb_are_mapped_to_the_box_size_of_the_original():
    original = Image.new("RGB", (60, 40), "white")
    prepared = _prepared(original, (10, 0, 50, 40))     # a centre crop, 40 x 40
    a = torch.randn(3, 8, 8)
    assert render.render(a, "heatmap", prepared).size == (40, 40)
    assert render.render(a, "rgb", prepared).size == (40, 40)


def test_overlay_covers_the_whole_original_and_alpha_blends():
    original = Image.new("RGB", (60, 40), (200, 100, 50))
    prepared = _prepared(original, (10, 0, 50, 40))
    a = torch.ones(3, 8, 8)                               # saliency 1 everywhere in the box
    opaque = np.asarray(render.render(a, "overlay", prepared, alpha=1.0, cmap="gray"))
    assert opaque.shape == (40, 60, 3)
    assert (opaque[:, 10:50] == 255).all()                # heat inside the box
    assert (opaque[:, :10] == 0).all() and (opaque[:, 50:] == 0).all()   # zero saliency outside
    clear = np.asarray(render.render(a, "overlay", prepared, alpha=0.0))
    assert (clear == np.asarray(original)).all()
    half = np.asarray(render.render(a, "overlay", prepared, alpha=0.5, cmap="gray")).astype(int)
    assert np.abs(half[0, 20] - [227, 177, 152]).max() <= 1
    assert np.abs(half[0, 0] - [100, 50, 25]).max() <= 1


def test_overlay_on_a_plain_image_stretches_the_heatmap_over_it():
    picture = render.render(torch.randn(3, 8, 8), "overlay", image=Image.new("RGB", (30, 20)))
    assert picture.size == (30, 20)
    with pytest.raises(InputError, match="needs the original image"):
        render.render(torch.randn(3, 8, 8), "overlay")


def test_convention_is_stated_per_style_and_written_into_the_png():
    assert "max over channels of |attribution|" in render.convention("heatmap")
    assert "99th percentile" in render.convention("heatmap")
    assert "alpha 0.3" in render.convention("overlay", alpha=0.3)
    assert "signed" in render.convention("rgb") and "grey = 0" in render.convention("rgb")
    assert "maximum" in render.convention("heatmap", percentile=100)
    picture = render.render(torch.randn(3, 5, 7), "rgb", percentile=98)
    data = render.to_png(picture, {"method": "guided"})
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    assert decoded.size == (7, 5) and decoded.format == "PNG"
    assert decoded.text["Description"] == render.convention("rgb", percentile=98)
    assert decoded.text["method"] == "guided"


@pytest.mark.parametrize("call, message", [
    (lambda: render.render(torch.randn(3, 4, 4), "jet"), "unknown style 'jet'"),
    (lambda: render.render(torch.randn(3, 4, 4), alpha=1.5), "alpha"),
    (lambda: render.grayscale(torch.randn(3, 4, 4), percentile=0), "percentile"),
    (lambda: render.grayscale(torch.randn(4, 4)), "shaped"),
    (lambda: render.render(torch.randn(2, 3, 4, 4)), "render_batch"),
    (lambda: render.grayscale(torch.tensor([[[float("nan")]]])), "NaN"),
    (lambda: render.render_batch(torch.zeros(0, 3, 4, 4)), "empty"),
])
def test_bad_arguments_raise_saliency_errors(call, message):
    with pytest.raises(SaliencyError, match=message):
        call()


def test_save_png_is_atomic_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "out" / "map.png"
    render.save_png(render.render(torch.randn(3, 4, 4)), target)
    assert Image.open(target).size == (4, 4)
    assert os.listdir(target.parent) == ["map.png"]


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = render.write_atomic(tmp_path / "x.png", b"data")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "map.png"
    target.write_bytes(b"old")

    class Boom:
        def __len__(self):
            return 1

        def __buffer__(self, flags):
            raise KeyboardInterrupt

    with pytest.raises((KeyboardInterrupt, TypeError)):
        render.write_atomic(target, Boom())
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["map.png"]
