"""Your own model (``package.module:factory`` + weights + labels + preprocessing) through the CLI and the API."""

from __future__ import annotations

import base64
import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import saliency
from saliency.api import create_app
from saliency.api.config import ConfigError, load_settings
from saliency.cli import main
from saliency.models import load_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXECUTABLE = Path(sys.executable).with_name("saliency")
PACKAGE = "custom_iface_nets"
SPEC = f"{PACKAGE}.fixed32:build"
LABELS = ("apple", "banana", "cherry", "date")

# A network that only accepts 32 × 32 inputs (its head is sized for them): any other input size fails.
MODULE = """
import torch
from torch import nn


class Fixed32(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, num_classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 4)
        return self.head(x.flatten(1))


def build():
    return Fixed32(4)
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def custom(tmp_path, monkeypatch):
    """The package in ``tmp_path/src`` (importable here), its weights file, its labels file and a photo."""
    package = tmp_path / "src" / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "fixed32.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    from custom_iface_nets.fixed32 import Fixed32

    torch.manual_seed(0)
    torch.save(Fixed32(4).state_dict(), tmp_path / "fixed32.pt")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    Image.open(EXAMPLES / "star.png").convert("RGB").resize((96, 64)).save(tmp_path / "photo.png")
    yield tmp_path
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def model_args(where: Path) -> list[str]:
    return ["--model", SPEC, "--weights", str(where / "fixed32.pt"), "--labels", str(where / "labels.txt"),
            "--input-size", "32", "--mean", "0.5", "--std", "0.25"]


def library_model(where: Path):
    return load_model(SPEC, where / "fixed32.pt", labels=where / "labels.txt", input_size=32, mean=0.5, std=0.25)


def expected_top(where: Path, image: Image.Image):
    model = library_model(where)
    prepared = model.prepare(image)
    result = saliency.explain(model.module, prepared.tensor, methods="vanilla")
    return model, prepared, result


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def argparse_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err
    return errors[0]


# --- CLI ---------------------------------------------------------------------------------------------

def test_explain_a_custom_model_with_its_labels_and_preprocessing(capsys, custom):
    photo = custom / "photo.png"
    code, out, err = run(capsys, "explain", str(photo), *model_args(custom), "--method", "guided",
                         "--out", str(custom / "maps"))
    assert code == 0, err
    model, _, result = expected_top(custom, Image.open(photo))
    probabilities = result.probabilities[0]
    top3 = probabilities.topk(3).indices.tolist()
    first = out.splitlines()[0]
    assert first == f"{photo}: " + ", ".join(f"{LABELS[i]} {float(probabilities[i]):.1%}" for i in top3)
    (png,) = (custom / "maps").iterdir()
    assert png.name == f"photo-guided-heatmap-{LABELS[top3[0]]}.png"
    picture = Image.open(png)
    # the heatmap covers the square the model saw, in the photo's pixels: the 64 × 64 centre
    assert picture.size == (64, 64) and picture.text["target"] == LABELS[top3[0]]
    assert picture.text["model"] == SPEC

    # --resize 64 keeps the photo at scale 1: the 32 × 32 input is a 32 × 32 crop of it
    code, _, err = run(capsys, "explain", str(photo), *model_args(custom), "--resize", "64", "--method", "vanilla",
                       "--target", "cherry", "--out", str(custom / "resized"))
    assert code == 0, err
    (png,) = (custom / "resized").iterdir()
    assert png.name == "photo-vanilla-heatmap-cherry.png" and Image.open(png).size == (32, 32)


def test_without_the_input_size_the_model_fails_in_one_line(capsys, custom):
    code, _, err = run(capsys, "explain", str(custom / "photo.png"), "--model", SPEC,
                       "--weights", str(custom / "fixed32.pt"), "--out", str(custom / "maps"))
    assert code == 1 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("saliency: error: ") and "[1, 3, 224, 224]" in line
    code, _, err = run(capsys, "explain", str(custom / "photo.png"), *model_args(custom), "--resize", "16",
                       "--out", str(custom / "maps"))
    assert code == 1 and err.startswith("saliency: error: ") and len(err.strip().splitlines()) == 1


def test_compare_a_custom_model(capsys, custom):
    figure = custom / "grid.png"
    code, out, err = run(capsys, "compare", str(custom / "photo.png"), *model_args(custom),
                         "--methods", "vanilla,guided", "--target", "date", "--out", str(figure))
    assert code == 0, err
    assert "target: date (class 3)" in out and figure.is_file()


@pytest.mark.parametrize("flag, value, words", [
    ("--mean", "1,2", "one number or three"),
    ("--mean", "a,b,c", "one number or three"),
    ("--mean", "nan", "one number or three"),
    ("--std", "0.2,0,0.2", "positive"),
    ("--input-size", "0", "at least 1"),
    ("--resize", "big", "whole number"),
])
def test_bad_preprocessing_flags_are_one_argparse_error(capsys, flag, value, words):
    for command in (["explain", "x.png"], ["compare", "x.png"], ["serve"]):
        line = argparse_error(capsys, *command, flag, value)
        assert line.startswith(f"saliency {command[0]}: error: argument {flag}") and words in line


def test_serve_passes_the_model_settings_to_its_workers(custom, tmp_path):
    import requests

    from servers import free_port, running_server

    port = free_port()
    command = [str(EXECUTABLE), "serve", "--port", str(port), "--workers", "1", "--threads", "1", *model_args(custom)]
    with running_server(command, port, tmp_path / "serve.log", env={"PYTHONPATH": str(custom / "src")}) as url:
        models = requests.get(f"{url}/v1/models", timeout=10)
        assert models.json()["serving"] == {"name": SPEC, "classes": 4, "input_size": 32,
                                            "weights": "file 'fixed32.pt'"}  # its name only, never the path
        with open(custom / "photo.png", "rb") as photo:
            answer = requests.post(f"{url}/v1/explain?method=vanilla&raw=npy", files={"image": photo}, timeout=60)
        assert answer.status_code == 200, answer.text
        (result,) = answer.json()["results"]
        assert {p["label"] for p in result["predictions"]} == set(LABELS)
        raw = np.load(io.BytesIO(base64.b64decode(result["explanations"][0]["maps"]["vanilla"]["npy"])))
        assert raw.shape == (3, 32, 32)


# --- API ---------------------------------------------------------------------------------------------

def test_create_app_serves_a_custom_model_with_its_labels_and_input_size(custom):
    app = create_app({"TESTING": True, "model": SPEC, "weights": str(custom / "fixed32.pt"),
                      "labels": str(custom / "labels.txt"), "input_size": "32", "mean": "0.5", "std": "0.25"})
    client = app.test_client()
    body = client.get("/v1/models").get_json()
    assert body["serving"]["input_size"] == 32 and body["serving"]["classes"] == 4
    assert body["models"] == [SPEC]
    assert body["catalog"][0] == {"name": SPEC, "description": f"custom model {SPEC}", "kind": "custom",
                                  "input_size": 32, "classes": 4, "weights_on_disk": True, "loaded": True}
    data = (custom / "photo.png").read_bytes()
    response = client.post("/v1/explain?method=vanilla&raw=npy", data={"image": (io.BytesIO(data), "photo.png")},
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    (result,) = response.get_json()["results"]
    # the same numbers as the library with the same preprocessing (mean 0.5, std 0.25, 32 px)
    _, prepared, expected = expected_top(custom, Image.open(io.BytesIO(data)))
    assert prepared.tensor.shape == (1, 3, 32, 32)
    top = int(expected.targets[0])
    assert [p["label"] for p in result["predictions"]][0] == LABELS[top]
    assert {p["label"] for p in result["predictions"]} == set(LABELS)
    assert result["predictions"][0]["probability"] == pytest.approx(float(expected.probabilities[0, top]), abs=1e-5)
    raw = np.load(io.BytesIO(base64.b64decode(result["explanations"][0]["maps"]["vanilla"]["npy"])))
    assert raw.shape == (3, 32, 32)
    np.testing.assert_allclose(raw, expected["vanilla"][0].numpy(), rtol=1e-4, atol=1e-6)
    response = client.post("/v1/explain?method=vanilla&target=banana",
                           data={"image": (io.BytesIO(data), "photo.png")}, content_type="multipart/form-data")
    assert response.status_code == 200
    assert response.get_json()["results"][0]["explanations"][0]["target"]["label"] == "banana"


def test_custom_model_settings_from_the_environment(custom, monkeypatch):
    monkeypatch.setenv("SALIENCY_MODEL", SPEC)
    monkeypatch.setenv("SALIENCY_WEIGHTS", str(custom / "fixed32.pt"))
    monkeypatch.setenv("SALIENCY_LABELS", str(custom / "labels.txt"))
    monkeypatch.setenv("SALIENCY_INPUT_SIZE", "32")
    monkeypatch.setenv("SALIENCY_RESIZE", "40")
    monkeypatch.setenv("SALIENCY_MEAN", "0.5")
    monkeypatch.setenv("SALIENCY_STD", "0.25, 0.25,0.5")
    app = create_app({"TESTING": True})
    state = app.extensions["saliency"]
    settings, model = state.settings, state.model
    assert (settings.input_size, settings.resize, settings.mean, settings.std) == (32, 40, (0.5,), (0.25, 0.25, 0.5))
    assert model.labels == LABELS
    p = model.preprocessing
    assert (p.crop, p.resize, p.mean, p.std) == (32, 40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.5))
    assert app.test_client().get("/v1/models").get_json()["serving"]["input_size"] == 32


@pytest.mark.parametrize("environ, words", [
    ({"SALIENCY_INPUT_SIZE": "big"}, "SALIENCY_INPUT_SIZE must be a number"),
    ({"SALIENCY_INPUT_SIZE": "0"}, "SALIENCY_INPUT_SIZE must be a positive"),
    ({"SALIENCY_RESIZE": "-3"}, "SALIENCY_RESIZE must be a positive"),
    ({"SALIENCY_INPUT_SIZE": "64", "SALIENCY_RESIZE": "32"}, "SALIENCY_RESIZE \\(32\\) must be at least"),
    ({"SALIENCY_MEAN": "1,2"}, "SALIENCY_MEAN must be one number or three"),
    ({"SALIENCY_MEAN": "0.5,x,0.5"}, "SALIENCY_MEAN must be one number or three"),
    ({"SALIENCY_STD": "inf"}, "SALIENCY_STD must be one number or three"),
    ({"SALIENCY_STD": "0.2,-1,0.2"}, "SALIENCY_STD values must be positive"),
])
def test_bad_preprocessing_settings_are_config_errors(environ, words):
    with pytest.raises(ConfigError, match=words):
        load_settings(environ=environ)


def test_preprocessing_settings_as_python_values():
    settings = load_settings({"input_size": 32, "mean": 0.5, "std": [0.2, 0.3, 0.4]}, environ={})
    assert (settings.input_size, settings.mean, settings.std) == (32, (0.5,), (0.2, 0.3, 0.4))
    with pytest.raises(ConfigError, match="SALIENCY_MEAN"):
        load_settings({"mean": (0.1, 0.2)}, environ={})
    with pytest.raises(ConfigError, match="SALIENCY_INPUT_SIZE"):
        load_settings({"input_size": 3.5}, environ={})
