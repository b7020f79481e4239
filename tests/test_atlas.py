"""The feature atlas: top-k per channel, crop boxes from the projections' support, the `saliency features` command."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import saliency
from saliency.atlas import TILE, Strongest, feature_atlas, maxima, parse_channels, support_box
from saliency.cli import main
from saliency.errors import OptionError
from saliency.models import LoadedModel, load_model
from saliency.models.shapes import make_sample
from saliency.preprocess import Preprocessing

SIZE = 16


class DotNet(nn.Module):
    """``a``: a 1×1 convolution, channel 0 = green, channel 1 = red; ``b``: a 3×3 stride-2 convolution of positive
    weights over ``a``, so a unit of ``b`` at (i, j) reaches input rows and columns 2i−1 … 2i+1, 2j−1 … 2j+1."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1, bias=False)
        self.b = nn.Conv2d(2, 2, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(2 * 8 * 8, 2)
        with torch.no_grad():
            self.a.weight.zero_()
            self.a.weight[0, 1] = 1.0
            self.a.weight[1, 0] = 1.0
            self.b.weight.copy_(torch.rand(self.b.weight.shape, generator=torch.Generator().manual_seed(0)) + 0.1)

    def forward(self, x):
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).flatten(1))


# Image i: a red dot of brightness RED[i] at RED_AT[i], a green dot GREEN[i] at GREEN_AT[i], on black.
RED = [40, 200, 90, 250, 10, 170, 120, 230]
GREEN = [220, 30, 180, 60, 240, 100, 140, 20]
RED_AT = [(0, 0), (5, 9), (12, 3), (15, 15), (7, 7), (2, 14), (9, 1), (8, 0)]
GREEN_AT = [(3, 3), (10, 10), (1, 12), (14, 2), (6, 0), (11, 6), (0, 15), (13, 13)]


@pytest.fixture(scope="module")
def dots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dots")
    for i in range(len(RED)):
        pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
        pixels[RED_AT[i]] = (RED[i], 0, 0)
        pixels[GREEN_AT[i]] = (0, GREEN[i], 0)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    model = LoadedModel("dots", DotNet().eval(), ("a", "b"),
                        Preprocessing(crop=SIZE, resize=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    return folder, model


def test_the_top_k_of_each_channel_are_its_strongest_images_at_their_strongest_position(dots):
    folder, model = dots
    atlas = feature_atlas(model, [str(folder)], ["a"], top=3, batch_size=3)  # batches split the top-k
    (layer,) = atlas.layers
    assert layer.shape == (2, SIZE, SIZE) and sorted(layer.channels) == [0, 1]
    for channel, brightness, where in ((0, GREEN, GREEN_AT), (1, RED, RED_AT)):
        best = sorted(range(len(brightness)), key=lambda i: -brightness[i])[:3]
        entries = layer.entries[channel]
        assert [atlas.sources[e.image] for e in entries] == [str(folder / f"{i}.png") for i in best]
        assert [e.position for e in entries] == [where[i] for i in best]
        assert [e.activation for e in entries] == pytest.approx([brightness[i] / 255 for i in best])
        # a 1×1 convolution: the projection reaches exactly the one pixel under the unit
        assert [e.box for e in entries] == [(c, r, c + 1, r + 1) for r, c in (where[i] for i in best)]
    assert layer.channels == [1, 0], "the channel with the stronger top-3 comes first"


def test_crop_boxes_are_the_receptive_field_clipped_to_the_image(dots):
    folder, model = dots
    atlas = feature_atlas(model, [str(folder)], ["b"], channels=[0, 1], top=8)
    (layer,) = atlas.layers
    assert layer.shape == (2, 8, 8)
    seen = 0
    for channel in (0, 1):
        for entry in layer.entries[channel]:
            i, j = entry.position
            expected = (max(2 * j - 1, 0), max(2 * i - 1, 0), min(2 * j + 2, SIZE), min(2 * i + 2, SIZE))
            assert entry.box == expected, (channel, entry)
            seen += expected[0] == 0 or expected[1] == 0 or expected[2] == SIZE or expected[3] == SIZE
    assert seen, "some units sit at the border, where the field is clipped"


def test_strongest_keeps_one_entry_per_image_across_batches():
    keeper = Strongest(2)
    keeper.map_shape = (2, 3, 3)
    keeper.add(torch.tensor([[1.0, 5.0], [3.0, 0.5]]), torch.tensor([[4, 0], [8, 2]]), [0, 1])
    keeper.add(torch.tensor([[2.0, 6.0]]), torch.tensor([[1, 7]]), [5])
    assert [(e.image, e.position, e.activation) for e in keeper.entries(0)] == [(1, (2, 2), 3.0), (5, (0, 1), 2.0)]
    assert [(e.image, e.position, e.activation) for e in keeper.entries(1)] == [(5, (2, 1), 6.0), (0, (0, 0), 5.0)]
    assert keeper.strongest_channels(1) == [1]


def test_maxima_support_box_and_channel_lists():
    a = torch.zeros(1, 2, 3, 4)
    a[0, 0, 2, 1], a[0, 1, 0, 3] = 5.0, -1.0
    values, index = maxima(a)
    assert values.tolist() == [[5.0, 0.0]] and index.tolist() == [[9, 0]]
    projection = torch.zeros(3, 6, 6)
    projection[1, 2, 4] = -0.1
    projection[0, 4, 1] = 2.0
    assert support_box(projection) == (1, 2, 5, 5)
    assert support_box(torch.zeros(3, 4, 4)) is None
    assert parse_channels("0-3, 7,2") == [0, 1, 2, 3, 7]
    for bad in ("a-b", "3-1", "", "1,,2"):
        with pytest.raises(OptionError):
            parse_channels(bad)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    for i in range(24):
        make_sample(i, seed=11).pil().save(folder / f"{i:02d}.png")
    return folder


def test_the_features_command_on_the_demo_model(capsys, tmp_path, shapes):
    out = tmp_path / "atlas"
    assert main(["features", str(shapes), "--layer", "features.7", "--layer", "classifier", "--top-channels", "3",
                 "--top", "4", "--out", str(out)]) == 0
    assert "features.7.png" in capsys.readouterr().out
    report = json.loads((out / "atlas.json").read_text())
    assert (report["model"], report["method"], report["top"], report["images"]) == ("demo", "deconvnet", 4, 24)
    conv, linear = report["layers"]
    assert conv["shape"] == [64, 16, 16] and linear["shape"] == [8]
    width = 70 + 2 * 4 * (TILE + 4) + 3 * 4
    assert Image.open(out / "features.7.png").size == (width, 40 + 3 * (TILE + 4) + 4)
    demo = load_model("demo")
    for channel in conv["channels"]:
        units = channel["units"]
        assert len(units) == 4 and len({u["image"] for u in units}) == 4
        assert [u["activation"] for u in units] == sorted((u["activation"] for u in units), reverse=True)
        for u in units[:2]:  # the recorded unit, its value and its box, as the library sees them
            x = demo.prepare(Image.open(u["image"])).tensor
            result = saliency.explain(demo.module, x, "deconvnet", f"features.7:{channel['channel']}@max")
            assert result.unit_positions[0].tolist() == u["position"]
            assert float(result.unit_values[0]) == pytest.approx(u["activation"], rel=1e-4)
            assert list(support_box(result["deconvnet"][0])) == u["box"]
            left, top, right, bottom = u["box"]
            row, col = u["position"]
            assert left <= 4 * col < right and top <= 4 * row < bottom, "the field holds the unit's own pixels"
    for channel in linear["channels"]:
        assert all(u["position"] is None and u["box"] is not None for u in channel["units"])


@pytest.mark.parametrize("argv, message", [
    (["--layer", "features.77"], "saliency: error: the model has no layer 'features.77'; did you mean 'features.7'"),
    (["--layer", "features.7", "--channels", "60-70"], "saliency: error: unit features.7:70: channel 70 is out of range"),
    (["--layer", "features.7", "--channels", "x"], "saliency: error: channels must be numbers or ranges"),
    (["--layer", "features.7", "--method", "lime"], "saliency: error: unknown method 'lime'"),
    (["--layer", "features.7", "--workers", "2"], "saliency: error: --address and --workers need --engine ray"),
])
def test_bad_features_arguments_are_one_error_line(capsys, tmp_path, shapes, argv, message):
    assert main(["features", str(shapes), *argv, "--out", str(tmp_path / "atlas")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err, err
    assert not (tmp_path / "atlas").exists()


def test_an_unreadable_image_is_left_out_and_reported(capsys, tmp_path, shapes):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("00.png", "01.png", "02.png"):
        (folder / name).write_bytes((shapes / name).read_bytes())
    (folder / "broken.png").write_bytes(b"not a picture")
    assert main(["features", str(folder), "--layer", "features.4", "--top-channels", "2", "--top", "2",
                 "--out", str(tmp_path / "atlas")]) == 1
    assert "1 of 4 images could not be read" in capsys.readouterr().err
    report = json.loads((tmp_path / "atlas" / "atlas.json").read_text())
    assert report["images"] == 3 and report["failed"] == [str(folder / "broken.png")]


def test_the_readme_atlas_is_what_the_command_draws(tmp_path, monkeypatch):
    """docs/atlas/ holds what the README's two commands make, offline, on the bundled demo model."""
    docs = Path(__file__).parent.parent / "docs" / "atlas"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").mkdir()
    for i in range(256):
        make_sample(i, seed=1).pil().save(f"shapes/{i:03d}.png")
    assert main(["features", "shapes/", "--layer", "features.7", "--top-channels", "8", "--top", "6",
                 "--out", "atlas"]) == 0
    made, committed = (json.loads((folder / "atlas.json").read_text()) for folder in (tmp_path / "atlas", docs))
    assert made["images"] == committed["images"] == 256
    for ours, theirs in zip(made["layers"][0]["channels"], committed["layers"][0]["channels"], strict=True):
        assert ours["channel"] == theirs["channel"]
        assert [(u["image"], u["unit"], u["box"]) for u in ours["units"]] == \
            [(u["image"], u["unit"], u["box"]) for u in theirs["units"]]
    assert Image.open(tmp_path / "atlas" / "features.7.png").size == Image.open(docs / "features.7.png").size
