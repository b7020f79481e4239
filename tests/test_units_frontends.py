"""Units in the string form through every front end: CLI --target, HTTP target=, the batch job."""

import base64
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import saliency
from saliency.api.app import create_app
from saliency.batch import explain_dataset
from saliency.cli import main
from saliency.images import open_image
from saliency.models import load_model
from saliency.models.shapes import make_sample

UNIT = "features.7:12@max"


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture(scope="module")
def star_png() -> bytes:
    buffer = io.BytesIO()
    make_sample(3, seed=5).pil().save(buffer, "PNG")
    return buffer.getvalue()


def _library(demo, data: bytes, target, method: str = "guided"):
    prepared = demo.prepare(open_image(data))
    return saliency.explain(demo.module, prepared.tensor, method, target)


# --- HTTP ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[0.0, 5.0], ids=["unbatched", "batched"])
def client(request):
    return create_app({"TESTING": True, "model": "demo", "batch_delay_ms": request.param}).test_client()


def _post(client, data: bytes, query: str):
    return client.post(f"/v1/explain{query}", data={"image": [(io.BytesIO(data), "star.png")]},
                       content_type="multipart/form-data")


def test_http_target_names_a_unit(client, demo, star_png):
    response = _post(client, star_png, f"?target={UNIT}&method=guided&raw=npy")
    assert response.status_code == 200, response.get_data(as_text=True)
    (explanation,) = response.get_json()["results"][0]["explanations"]
    expected = _library(demo, star_png, UNIT)
    row, col = expected.unit_positions[0].tolist()
    assert explanation["target"] == {"unit": f"features.7:12@{row},{col}", "label": f"features.7:12@{row},{col}",
                                     "layer": "features.7", "channel": 12, "position": [row, col],
                                     "value": pytest.approx(float(expected.unit_values[0]), abs=1e-5)}
    raw = np.load(io.BytesIO(base64.b64decode(explanation["maps"]["guided"]["npy"])))
    np.testing.assert_allclose(raw, expected["guided"][0].numpy(), rtol=1e-4, atol=1e-7)


def test_http_answers_for_units_match_the_documented_schema(client, star_png):
    from openapi_schema_validator import OAS31Validator

    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["Explanation"]
    for target in (UNIT, "features.7:3", "classifier:2"):
        answer = _post(client, star_png, f"?target={target}&method=vanilla").get_json()
        OAS31Validator(schema).validate(answer)
        assert answer["results"][0]["explanations"][0]["target"]["layer"] == target.split(":")[0]


def test_http_png_of_a_unit_says_which_unit(client, star_png):
    response = _post(client, star_png, "?target=features.7.0:3&method=deconvnet&format=png")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["X-Saliency-Target"] == "features.7.0:3"
    assert "X-Saliency-Probability" not in response.headers
    assert Image.open(io.BytesIO(response.data)).size == (64, 64)


@pytest.mark.parametrize("target, detail", [
    ("features.77:1", "the model has no layer 'features.77'; did you mean 'features.7'"),
    ("features.7:64", "channel 64 is out of range: layer 'features.7' has 64 channels (0..63)"),
    ("features.7:1@16,0", "position (16, 0) is outside the 16×16 map of layer 'features.7'"),
    ("features.7:1@top", "after '@' give ROW,COL (whole numbers) or max"),
    ("features.7:one", "the channel must be a whole number"),
    ("classifier:1@max", "which has no positions; name the unit as 'classifier:1'"),
])
def test_http_bad_units_are_400_with_a_reason(client, star_png, target, detail):
    response = _post(client, star_png, f"?target={target}&method=vanilla")
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_target" and detail in body["detail"] and "\n" not in body["detail"]


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_explain_takes_units(capsys, tmp_path, demo, star_png):
    image = tmp_path / "star.png"
    image.write_bytes(star_png)
    assert main(["explain", str(image), "--method", "deconvnet", "--target", UNIT, "--target", "features.7:12",
                 "--target", "star", "--out", str(tmp_path / "maps")]) == 0
    row, col = _library(demo, star_png, UNIT).unit_positions[0].tolist()
    written = {p.name.rsplit("-", 1)[-1]: p for p in (tmp_path / "maps").iterdir()}  # STEM-...-TARGET.png
    assert sorted(written) == sorted([f"features.7_12_{row}_{col}.png", "features.7_12.png", "star.png"])
    assert Image.open(written[f"features.7_12_{row}_{col}.png"]).text["target"] == f"features.7:12@{row},{col}"


def test_cli_compare_takes_a_unit(capsys, tmp_path, demo, star_png):
    image = tmp_path / "star.png"
    image.write_bytes(star_png)
    assert main(["compare", str(image), "--methods", "vanilla,deconvnet", "--target", UNIT,
                 "--out", str(tmp_path / "grid.png")]) == 0
    row, col = _library(demo, star_png, UNIT).unit_positions[0].tolist()
    assert f"target: features.7:12@{row},{col} (unit)" in capsys.readouterr().out
    assert (tmp_path / "grid.png").exists()


@pytest.mark.parametrize("target, message", [
    ("features.77:1", "saliency: error: the model has no layer 'features.77'; did you mean 'features.7'"),
    ("features.7:64", "saliency: error: unit features.7:64: channel 64 is out of range"),
    ("features.7:1@x,y", "saliency: error: unit 'features.7:1@x,y': after '@' give ROW,COL"),
])
@pytest.mark.parametrize("command", ["explain", "batch"])
def test_cli_bad_units_are_one_error_line(capsys, tmp_path, star_png, command, target, message):
    image = tmp_path / "star.png"
    image.write_bytes(star_png)
    assert main([command, str(image), "--target", target, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err, err
    assert not (tmp_path / "out").exists(), "nothing written before the unit is checked"


# --- batch job -----------------------------------------------------------------------------------

def test_batch_rows_of_a_unit(tmp_path, demo):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        make_sample(i, seed=9).pil().save(folder / f"{i}.png")
    summary = explain_dataset([str(folder)], str(tmp_path / "out"), methods=["vanilla"], targets=[UNIT, "2"])
    assert summary.ok and summary.explained == 3
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert len(rows) == 6
    for path in sorted(folder.iterdir()):
        unit_row, class_row = sorted((r for r in rows if r["source"] == str(path)), key=lambda r: r["rank"])
        expected = _library(demo, path.read_bytes(), UNIT, "vanilla")
        row, col = expected.unit_positions[0].tolist()
        assert (unit_row["target"], unit_row["label"], unit_row["probability"]) == (-1, f"features.7:12@{row},{col}",
                                                                                   None)
        np.testing.assert_allclose(np.asarray(unit_row["map_vanilla"]).reshape(unit_row["map_shape"]),
                                   expected["vanilla"][0].numpy(), rtol=1e-4, atol=1e-7)
        assert class_row["target"] == 2 and class_row["probability"] is not None
