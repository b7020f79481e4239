"""Preprocessing: resize + centre crop + normalise, and the box that maps the tensor back."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from saliency.errors import ImageError, InputError
from saliency.images import open_image
from saliency.preprocess import Prepared, Preprocessing


def test_identity_size_is_exact_normalisation():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    prep = Preprocessing(crop=64, resize=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    prepared = prep.prepare(Image.fromarray(pixels))
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert prepared.tensor.shape == (1, 3, 64, 64) and prepared.tensor.dtype == torch.float32
    assert torch.allclose(prepared.tensor[0], expected, atol=1e-6)
    assert prepared.box == (0, 0, 64, 64)
    assert torch.allclose(prep.unnormalise(prepared.tensor[0]), expected * 0.25 + 0.5, atol=1e-6)


@pytest.mark.parametrize("size, prep, box", [
    ((100, 50), Preprocessing(crop=64), (25, 0, 75, 50)),                  # landscape, shorter side to crop
    ((50, 100), Preprocessing(crop=64), (0, 25, 50, 75)),                  # portrait
    ((512, 384), Preprocessing(crop=224, resize=256), (87, 24, 423, 360)),  # ImageNet recipe
    ((30, 30), Preprocessing(crop=64, resize=72), (2, 2, 28, 28)),          # upscaled small picture
])
def test_box_is_the_centre_crop_in_original_pixels(size, prep, box):
    prepared = prep.prepare(Image.new("RGB", size))
    assert prepared.box == box
    assert prepared.tensor.shape == (1, 3, prep.crop, prep.crop)
    assert prepared.image.size == size


def test_a_marker_lands_where_the_box_says():
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    image.paste((255, 255, 255), (180, 60, 190, 70))     # a white square centred at (185, 65)
    prepared = Preprocessing(crop=100, resize=120).prepare(image)
    brightness = prepared.tensor[0].mean(dim=0)
    row, col = divmod(int(brightness.argmax()), brightness.shape[1])
    left, top, right, bottom = prepared.box
    x = left + (col + 0.5) * (right - left) / 100
    y = top + (row + 0.5) * (bottom - top) / 100
    assert abs(x - 185) <= 3 and abs(y - 65) <= 3


def test_matches_torchvision_transforms_closely():
    gradient = np.zeros((300, 400, 3), dtype=np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 400)[None, :]
    gradient[..., 1] = np.linspace(0, 255, 300)[:, None]
    gradient[..., 2] = 128
    image = Image.fromarray(gradient)
    weights = torchvision.models.ResNet50_Weights.DEFAULT
    t = weights.transforms()
    ours = Preprocessing(crop=t.crop_size[0], resize=t.resize_size[0], mean=tuple(t.mean), std=tuple(t.std))
    theirs = t(image)
    prepared = ours.prepare(image)
    assert prepared.tensor.shape[1:] == theirs.shape
    assert (prepared.tensor[0] - theirs).abs().mean() < 0.03


def test_exif_rotated_picture_keeps_upright_size_and_box():
    exif = Image.Exif()
    exif[0x0112] = 6                                       # stored 80×40, shown 40×80
    buffer = io.BytesIO()
    Image.new("RGB", (80, 40), (10, 200, 30)).save(buffer, "JPEG", exif=exif.tobytes())
    upright = open_image(buffer.getvalue())
    prepared = Preprocessing(crop=32).prepare(upright)
    assert prepared.image.size == (40, 80)
    assert prepared.box == (0, 20, 40, 60)


def test_grayscale_model_input_and_other_modes():
    prep = Preprocessing(crop=16, mean=0.5, std=0.5, channels=1)
    prepared = prep.prepare(Image.new("RGBA", (20, 20), (255, 255, 255, 255)))
    assert prepared.tensor.shape == (1, 1, 16, 16)
    assert torch.allclose(prepared.tensor, torch.ones(1, 1, 16, 16))
    assert prepared.image.mode == "RGB"


def test_prepare_many_batches_in_order():
    prep = Preprocessing(crop=32)
    images = [Image.new("RGB", (40, 40), (i * 60, 0, 0)) for i in range(4)]
    batch, prepared = prep.prepare_many(images)
    assert batch.shape == (4, 3, 32, 32)
    assert all(isinstance(p, Prepared) for p in prepared)
    for i, p in enumerate(prepared):
        assert torch.equal(batch[i : i + 1], p.tensor)
    with pytest.raises(InputError):
        prep.prepare_many([])


def test_to_original_puts_a_tensor_sized_picture_back_at_the_box():
    prepared = Preprocessing(crop=50).prepare(Image.new("RGB", (200, 100), (0, 0, 255)))
    assert prepared.box == (50, 0, 150, 100)
    heat = Image.new("RGB", prepared.input_size, (255, 0, 0))
    placed = prepared.to_original(heat)
    assert placed.size == (200, 100)
    assert placed.getpixel((100, 50)) == (255, 0, 0)
    assert placed.getpixel((10, 50)) == (0, 0, 0)
    over = prepared.to_original(heat, background=prepared.image)
    assert over.getpixel((10, 50)) == (0, 0, 255) and over.getpixel((100, 50)) == (255, 0, 0)


@pytest.mark.parametrize("kwargs", [dict(crop=0), dict(crop=224, resize=200), dict(crop=8, channels=2),
                                    dict(crop=8, std=(0.0, 1.0, 1.0)), dict(crop=8, mean=(0.1, 0.2)),
                                    dict(crop=8, interpolation="cubic-ish")])
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        Preprocessing(**kwargs)


def test_not_a_picture():
    with pytest.raises(ImageError):
        Preprocessing(crop=8).prepare(np.zeros((8, 8, 3)))
