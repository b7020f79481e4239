"""open_image: every colour mode decodes to upright RGB; every bad or hostile file is an ImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from saliency.errors import ImageError
from saliency.images import open_image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def halves(size=(40, 20), left=RED, right=BLUE) -> Image.Image:
    """Left half ``left``, right half ``right``."""
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def assert_close(pixel, expected, tolerance=12):
    assert np.abs(np.asarray(pixel, dtype=int) - np.asarray(expected)).max() <= tolerance, (pixel, expected)


# --- valid pictures ----------------------------------------------------------------------------

def test_rgb_png_round_trips_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    result = open_image(encode(Image.fromarray(pixels)))
    assert result.mode == "RGB" and result.size == (50, 30)
    assert np.array_equal(np.asarray(result), pixels)


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, 5, 10))
    image.putpixel((7, 5), (0, 0, 0, 128))
    result = open_image(encode(image))
    assert result.mode == "RGB"
    assert result.getpixel((8, 5)) == WHITE            # fully transparent red -> white
    assert result.getpixel((2, 5)) == BLUE             # opaque stays
    assert_close(result.getpixel((7, 5)), (127, 127, 127), 2)  # half-transparent black on white


@pytest.mark.parametrize("mode", ["L", "LA", "1", "P"])
def test_grey_bilevel_and_palette(mode):
    source = halves((20, 10), (0, 0, 0), WHITE)
    result = open_image(encode(source.convert(mode)))
    assert result.mode == "RGB" and result.size == (20, 10)
    assert_close(result.getpixel((2, 5)), (0, 0, 0))
    assert_close(result.getpixel((17, 5)), WHITE)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 255, 0] + [255, 0, 0] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 5, 10))                      # index 0 (green) is the transparent one
    data = encode(image, transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    result = open_image(data)
    assert result.getpixel((2, 5)) == WHITE
    assert result.getpixel((7, 5)) == RED


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(fmt):
    result = open_image(encode(halves().convert("CMYK"), fmt))
    assert result.mode == "RGB" and result.size == (40, 20)
    assert_close(result.getpixel((5, 10)), RED, 40)
    assert_close(result.getpixel((35, 10)), BLUE, 40)


def test_16_bit_png_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    data = encode(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    result = np.asarray(open_image(data))
    assert result.shape == (8, 64, 3)
    assert result[0, 0, 0] == 0 and result[0, -1, 0] == 255
    assert 120 <= result[0, 32, 0] <= 136                # mid-grey, not clipped at 255
    assert np.all(np.diff(result[0, :, 0].astype(int)) >= 0)


def test_32_bit_integer_and_float_tiff():
    ints = np.tile(np.linspace(0, 65535, 32), (4, 1)).astype(np.int32)
    as_int = np.asarray(open_image(encode(Image.fromarray(ints, mode="I"), "TIFF")))
    assert as_int[0, 0, 0] == 0 and as_int[0, -1, 0] == 255
    floats = np.tile(np.linspace(0.0, 1.0, 32), (4, 1)).astype(np.float32)
    as_float = np.asarray(open_image(encode(Image.fromarray(floats, mode="F"), "TIFF")))
    assert as_float.shape == (4, 32, 3) and as_float[0, 0, 0] == 0 and as_float[0, -1, 0] == 255


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (12, 12), RED), Image.new("RGB", (12, 12), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert_close(open_image(data).getpixel((6, 6)), RED, 8)


@pytest.mark.parametrize("orientation, size, top_left", [
    (1, (40, 20), RED),    # as stored
    (3, (40, 20), BLUE),   # rotated 180°
    (6, (20, 40), RED),    # rotate 90° clockwise to view: the stored left half ends up on top
    (8, (20, 40), BLUE),   # rotate 90° counter-clockwise to view
])
def test_exif_orientation_is_applied(orientation, size, top_left):
    exif = Image.Exif()
    exif[0x0112] = orientation
    result = open_image(encode(halves(), "JPEG", exif=exif.tobytes(), quality=95))
    assert result.size == size
    assert_close(result.getpixel((1, 1)), top_left, 40)


def test_path_file_object_and_bytearray_sources(tmp_path):
    data = encode(halves())
    path = tmp_path / "picture.png"
    path.write_bytes(data)
    for source in (path, str(path), io.BytesIO(data), bytearray(data), memoryview(data)):
        assert open_image(source).size == (40, 20)


def test_result_is_detached_from_the_file(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(encode(halves()))
    result = open_image(path)
    path.unlink()                                        # nothing keeps the file open
    assert result.getpixel((1, 1)) == RED


# --- bad pictures ------------------------------------------------------------------------------

def error_of(source, **options) -> str:
    with pytest.raises(ImageError) as caught:
        open_image(source, **options)
    return str(caught.value)


def test_empty_input():
    assert "empty" in error_of(b"")
    assert "empty" in error_of(io.BytesIO(b""))


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    assert "not an image" in error_of(path)


def test_missing_file_and_folder(tmp_path):
    assert "does not exist" in error_of(tmp_path / "nope.png")
    assert "folder" in error_of(tmp_path)


def test_truncated_jpeg_is_refused_not_half_decoded():
    pixels = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG", quality=90)
    message = error_of(data[: len(data) // 2])
    assert "truncated" in message or "corrupt" in message


def test_truncated_png_is_refused():
    pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels))
    assert "truncated" in error_of(data[: len(data) * 2 // 3])


def test_pixel_limit_is_checked_before_decoding():
    data = encode(Image.new("1", (7000, 7000)))          # 49 M pixels, a few kB on disk
    message = error_of(data)
    assert "49,000,000 pixels" in message and "40,000,000" in message
    assert "pixels" in error_of(encode(Image.new("RGB", (100, 100))), max_pixels=5000)


def test_pillow_decompression_bomb_warning_and_error_become_image_errors(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert "decompression bomb" in error_of(encode(Image.new("RGB", (40, 40))))   # > limit: warning
    assert "decompression bomb" in error_of(encode(Image.new("RGB", (50, 50))))   # > 2 × limit: error


def test_absurd_dimensions_and_aspect_ratio():
    assert "width exceeds the limit of 16384" in error_of(encode(Image.new("L", (100_000, 1))))
    assert "height exceeds" in error_of(encode(Image.new("L", (1, 20_000))))
    assert "aspect ratio 100:1" in error_of(encode(Image.new("L", (1000, 10))))
    assert open_image(encode(Image.new("L", (500, 10)))).size == (500, 10)    # 50:1 is accepted


def test_wrong_source_type():
    assert "cannot read an image" in error_of(12345)
