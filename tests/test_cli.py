"""The ``saliency`` command end to end on the bundled demo model and example images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import saliency
from saliency.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STAR = EXAMPLES / "star.png"
EXECUTABLE = Path(sys.executable).with_name("saliency")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("saliency: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def photo(tmp_path) -> Path:
    """The star example stretched to a non-square 'photo', so mapping back to its size is visible."""
    path = tmp_path / "wide photo.png"
    Image.open(STAR).convert("RGB").resize((96, 64)).save(path)
    return path


def test_version_through_the_installed_entry_point():
    done = subprocess.run([str(EXECUTABLE), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"saliency {saliency.__version__}"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("explain", "compare", "eval", "models", "serve", "train-demo"):
        assert command in out


@pytest.mark.parametrize("command", ["explain", "compare", "eval", "models", "serve", "train-demo"])
def test_every_command_has_help_with_examples(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"saliency {command}" in out


def test_explain_writes_one_png_per_method_at_the_image_size(capsys, tmp_path):
    out_dir = tmp_path / "maps"
    code, out, err = run(capsys, "explain", str(STAR), "--out", str(out_dir))
    assert code == 0, err
    files = sorted(out_dir.iterdir())
    assert len(files) == len(saliency.RULE_METHODS)                # the default: the three ReLU rules
    original = Image.open(STAR).size
    for method in saliency.RULE_METHODS:
        (path,) = [f for f in files if f.name.startswith(f"star-{method}-")]
        picture = Image.open(path)
        assert picture.format == "PNG" and picture.size == original
        assert "max over channels of |attribution|" in picture.text["Description"]
        assert str(path) in out
    first = out.splitlines()[0]
    assert first.startswith(f"{STAR}: ") and "%" in first        # top predictions with probabilities
    assert "99th percentile" in out


def test_explain_names_the_style_so_runs_in_other_styles_keep_each_others_files(capsys, tmp_path):
    for style in ("heatmap", "overlay"):
        code, _, err = run(capsys, "explain", str(STAR), "--style", style, "--out", str(tmp_path))
        assert code == 0, err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"star-{m}-{s}-star.png" for m in saliency.RULE_METHODS for s in ("heatmap", "overlay"))


def test_a_photo_explained_with_the_demo_gets_one_note_pointing_to_an_imagenet_model(capsys, tmp_path, photo):
    second = tmp_path / "second photo.png"
    second.write_bytes(photo.read_bytes())
    code, _, err = run(capsys, "explain", str(photo), str(second), "--out", str(tmp_path / "p"))
    assert code == 0, err
    assert err.count("saliency: note: the demo model knows only 8 drawn shapes") == 1 and "--model resnet50" in err
    code, _, err = run(capsys, "compare", str(photo), "--out", str(tmp_path / "c.png"))
    assert code == 0 and err.count("--model resnet50") == 1
    for command in (["explain", str(STAR), "--out", str(tmp_path / "s")], ["compare", str(STAR), "--out",
                                                                          str(tmp_path / "s.png")]):
        code, _, err = run(capsys, *command)
        assert code == 0 and "note:" not in err   # a drawn shape: no note


def test_explain_maps_heatmaps_to_the_crop_and_overlays_to_the_whole_picture(capsys, tmp_path, photo):
    code, _, err = run(capsys, "explain", str(photo), "--method", "guided", "--style", "overlay",
                       "--out", str(tmp_path / "o"))
    assert code == 0, err
    (overlay,) = (tmp_path / "o").iterdir()
    assert Image.open(overlay).size == (96, 64)
    code, _, err = run(capsys, "explain", str(photo), "--method", "vanilla,guided", "--style", "rgb",
                       "--out", str(tmp_path / "r"))
    assert code == 0, err
    pictures = sorted((tmp_path / "r").iterdir())
    assert len(pictures) == 2
    assert {Image.open(p).size for p in pictures} == {(64, 64)}   # the centre crop the model saw


def test_explain_takes_folders_and_globs_and_topk(capsys, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    images = sorted(p for p in EXAMPLES.glob("*.png") if ".mask." not in p.name)[:2]
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    code, out, err = run(capsys, "explain", str(folder), "--method", "guided", "--topk", "2",
                         "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert len(list((tmp_path / "a").iterdir())) == len(images) * 2
    code, out, err = run(capsys, "explain", str(folder / "*.png"), "--method", "all", "--option", "samples=3",
                         "--option", "steps=3", "--out", str(tmp_path / "b"))
    assert code == 0, err
    written = sorted((tmp_path / "b").iterdir())
    assert len(written) == len(images) * len(saliency.METHODS)
    assert not [p for p in written if not p.name.endswith(".png")]   # no temporary files left


def test_explain_target_by_label_and_index(capsys, tmp_path):
    from saliency.models import load_model

    labels = load_model("demo").labels
    code, _, err = run(capsys, "explain", str(STAR), "--method", "vanilla", "--target", labels[1],
                       "--target", "0", "--out", str(tmp_path))
    assert code == 0, err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2
    assert any(name.endswith(f"-{labels[1]}.png") for name in names)
    assert any(name.endswith(f"-{labels[0]}.png") for name in names)


def test_compare_draws_one_panel_per_method_and_prints_the_table(capsys, tmp_path):
    grid = tmp_path / "grid.png"
    code, out, err = run(capsys, "compare", str(STAR), "--out", str(grid))
    assert code == 0, err
    picture = Image.open(grid)
    assert picture.format == "PNG" and picture.width > picture.height
    assert _panels(picture) == 1 + len(saliency.RULE_METHODS)
    table = out[out.index("method"):].splitlines()
    for method in saliency.RULE_METHODS:
        row = next(line for line in table if line.startswith(method))
        assert " ms" in row and len(row.split()) == 3 + len(saliency.RULE_METHODS)
    assert "Spearman" in out and str(grid) in out

    code, out, err = run(capsys, "compare", str(STAR), "--methods", "all", "--option", "samples=3",
                         "--option", "steps=3", "--style", "overlay", "--out", str(grid))
    assert code == 0, err
    assert _panels(Image.open(grid)) == 1 + len(saliency.METHODS)

    code, out, err = run(capsys, "compare", str(STAR), "--methods", "vanilla,guided", "--style", "heatmap",
                         "--out", str(grid))
    assert code == 0, err
    assert _panels(Image.open(grid)) == 3


def test_models_lists_the_demo(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert any(line.split()[0] == "demo" for line in out.splitlines() if line.strip())


def test_serve_runs_the_http_service_until_stopped(tmp_path):
    import requests

    from servers import free_port, running_server

    port = free_port()
    command = [str(EXECUTABLE), "serve", "--port", str(port), "--workers", "1", "--threads", "1"]
    with running_server(command, port, tmp_path / "serve.log") as url:
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("dev", [False, True])
def test_serve_on_a_port_in_use_is_one_error_line_at_once(tmp_path, dev):
    import socket
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run([str(EXECUTABLE), "serve", "--port", str(port)] + ["--dev"] * dev,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        line = one_error_line(done.stderr)
        assert f"127.0.0.1:{port}" in line and "--port" in line
        assert time.monotonic() - started < 30  # no retries, no model loaded first


def test_train_demo_writes_weights_that_explain_can_load(capsys, tmp_path):
    weights = tmp_path / "tiny.pt"
    code, out, err = run(capsys, "train-demo", "--steps", "2", "--train-images", "32", "--test-images", "16",
                         "--threads", "1", "--out", str(weights))
    assert code == 0, err
    assert weights.is_file() and f"--weights {weights}" in out
    code, _, err = run(capsys, "explain", str(STAR), "--weights", str(weights), "--method", "guided",
                       "--out", str(tmp_path / "maps"))
    assert code == 0, err
    assert len(list((tmp_path / "maps").iterdir())) == 1


def test_train_demo_without_out_writes_a_new_file_here_and_never_the_bundled_weights(capsys, tmp_path,
                                                                                     monkeypatch):
    from saliency.models.demo import WEIGHTS_PATH

    bundled = WEIGHTS_PATH.read_bytes()
    monkeypatch.chdir(tmp_path)
    tiny = ("--steps", "1", "--train-images", "8", "--test-images", "8", "--threads", "1")
    for expected in ("demo-weights.pt", "demo-weights-2.pt"):
        code, out, err = run(capsys, "train-demo", *tiny)
        assert code == 0, err
        assert (tmp_path / expected).is_file() and f"--weights {expected}" in out
    assert WEIGHTS_PATH.read_bytes() == bundled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-weights-2.pt", "demo-weights.pt"]


@pytest.mark.parametrize("argv, message", [
    (["explain", "no/such/file.png"], "image file 'no/such/file.png' does not exist"),
    (["explain", "no/such/folder/"], "folder 'no/such/folder' does not exist"),
    (["explain", "no/such/*.png"], "no file matches"),
    (["compare", "no/such/file.png"], "does not exist"),
    (["explain", str(STAR), "--model", "no_such_model"], "no_such_model"),
    (["explain", str(STAR), "--method", "occlusion"], "unknown method 'occlusion'"),
    (["compare", str(STAR), "--methods", "vanilla,nope"], "unknown method 'nope'"),
    (["explain", str(STAR), "--target", "100000"], "100000"),
    (["explain", str(STAR), "--target", "no such class"], "no such class"),
    (["compare", str(STAR), "--target", "-1"], "-1"),
    (["explain", str(STAR), "--topk", "100000"], "--topk"),
    (["explain", str(STAR), "--cmap", "nope"], "colormap"),
    (["explain", str(STAR), "--weights", "no/such/weights.pt"], "weights.pt"),
    (["explain", str(STAR), "--option", "samples=3"], "samples"),
    (["compare", str(STAR), "--methods", "smoothgrad", "--option", "samples=many"], "samples"),
    (["explain", str(STAR), "--target", "9" * 5000], "out of range"),
    (["compare", str(STAR), "--target", "9" * 5000], "out of range"),
    (["explain", str(STAR), "--method", "smoothgrad", "--option", "seed=99999999999999999999999"], "seed"),
    (["explain", str(STAR), "--method", "gradcam", "--option", "layer=classifier"], "feature map"),
    (["compare", str(STAR), "--methods", "guided_gradcam", "--option", "layer=classifier"], "feature map"),
])
def test_bad_input_gives_one_error_line_and_a_nonzero_exit(capsys, tmp_path, argv, message):
    code, out, err = run(capsys, *argv, "--out", str(tmp_path / "out"))
    assert code != 0
    assert message in one_error_line(err)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--input-size", "1"], "1 x 1"),            # too small for the demo's pooling layers
    (["--input-size", "100000"], "input size"),  # a typo that would need 120 GB of memory
    (["--resize", "1000000"], "resize"),
])
def test_an_input_size_the_model_cannot_take_is_one_error_line(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, "explain", str(STAR), *argv, "--out", str(tmp_path / "out"))
    assert code == 1 and message in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_torchvision_weights_missing_offline_say_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SALIENCY_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))     # an empty cache
    code, _, err = run(capsys, "explain", str(STAR), "--model", "resnet18", "--out", str(tmp_path / "out"))
    assert code == 1
    line = one_error_line(err)
    assert "resnet18" in line.lower() and "--weights" in line
    assert not (tmp_path / "out").exists()


def test_device_option(capsys, tmp_path):
    import torch

    code, _, err = run(capsys, "explain", str(STAR), "--device", "cuda:99", "--out", str(tmp_path / "gpu"))
    assert code == 1 and "cuda:99" in one_error_line(err)
    if torch.cuda.is_available():   # on a GPU machine the maps match the CPU's pictures in size
        code, _, err = run(capsys, "explain", str(STAR), "--device", "cuda", "--out", str(tmp_path / "gpu"))
        assert code == 0, err
        assert [Image.open(p).size for p in (tmp_path / "gpu").iterdir()] == [Image.open(STAR).size] * len(saliency.RULE_METHODS)
    with pytest.raises(SystemExit) as exit_:
        main(["explain", str(STAR), "--device", "toaster"])
    assert exit_.value.code == 2 and "not a torch device" in capsys.readouterr().err


def test_a_file_that_is_not_an_image_is_reported(capsys, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    code, _, err = run(capsys, "explain", str(fake), "--out", str(tmp_path / "out"))
    assert code == 1 and "fake.png" in one_error_line(err)
    code, _, err = run(capsys, "compare", str(fake), "--out", str(tmp_path / "c.png"))
    assert code == 1 and "not an image" in one_error_line(err)


def test_an_unwritable_output_is_one_error_line(capsys, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should go")
    code, _, err = run(capsys, "explain", str(STAR), "--out", str(blocker))
    assert code == 1 and "choose another --out" in one_error_line(err)
    code, _, err = run(capsys, "compare", str(STAR), "--out", str(blocker / "grid.png"))
    assert code == 1 and "choose another --out" in one_error_line(err)


def test_an_output_that_is_a_folder_or_a_file_is_named_in_the_error(capsys, tmp_path):
    folder = tmp_path / "grid.png"
    folder.mkdir()
    code, _, err = run(capsys, "compare", str(STAR), "--out", str(folder))
    line = one_error_line(err)
    assert code == 1 and f"'{folder}'" in line and "directory" in line.lower() and ".part" not in line
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should go")
    code, _, err = run(capsys, "explain", str(STAR), "--out", str(blocker))
    line = one_error_line(err)
    assert code == 1 and f"'{blocker}'" in line and "not a directory" in line.lower()


@pytest.mark.parametrize("command", [["eval", "--n-images", "1", "--checks", "localisation", "--methods", "vanilla"],
                                     ["train-demo", "--steps", "1", "--train-images", "8", "--test-images", "8"]])
def test_an_output_in_the_way_fails_before_minutes_of_work(capsys, tmp_path, command):
    blocker = tmp_path / "taken"
    blocker.write_text("a file where a folder should go")
    out = blocker / "weights.pt" if command[0] == "train-demo" else blocker
    code, printed, err = run(capsys, *command, "--out", str(out))
    line = one_error_line(err)
    assert code == 1 and f"'{blocker}'" in line and "choose another --out" in line
    assert printed == ""  # nothing computed
    if command[0] == "train-demo":
        (tmp_path / "folder.pt").mkdir()
        code, printed, err = run(capsys, *command, "--out", str(tmp_path / "folder.pt"))
        assert code == 1 and "folder.pt" in one_error_line(err) and printed == ""


def test_one_bad_image_among_many_still_explains_the_rest(capsys, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, err = run(capsys, "explain", str(STAR), str(fake), "--method", "vanilla",
                         "--out", str(tmp_path / "out"))
    assert code == 1
    assert len(list((tmp_path / "out").iterdir())) == 1
    assert "fake.png" in err and "1 of 2 images" in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["explain", str(STAR), "--alpha", "2"], "--alpha: expected a number between 0 and 1, got 2"),
    (["explain", str(STAR), "--alpha", "nan"], "--alpha: expected a number between 0 and 1, got nan"),
    (["explain", str(STAR), "--batch-size", "0"], "--batch-size: expected a whole number of at least 1, got 0"),
    (["explain", str(STAR), "--topk", "two"], "--topk: expected a whole number of at least 1, got 'two'"),
    (["serve", "--port", "70000"], "--port: expected a whole number between 1 and 65535, got 70000"),
    (["train-demo", "--seed", "-1"], "--seed: expected a whole number between 0 and 4294967295, got -1"),
])
def test_a_bad_option_value_is_an_argparse_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", [["eval", "--n-images", "1"], ["train-demo", "--steps", "1"]])
@pytest.mark.parametrize("seed", ["-1", "99999999999999999999999"])
def test_a_seed_numpy_or_torch_cannot_take_is_an_argparse_error(capsys, tmp_path, command, seed):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--seed", seed, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "--seed" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_errors_through_the_installed_entry_point_have_no_traceback(tmp_path):
    done = subprocess.run([str(EXECUTABLE), "explain", str(tmp_path / "missing.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("saliency: error: ") and "Traceback" not in done.stderr


def _panels(picture: Image.Image) -> int:
    """Picture panels side by side: runs of non-white columns across the figure's middle band."""
    pixels = np.asarray(picture.convert("L"))
    band = pixels[int(pixels.shape[0] * 0.4):int(pixels.shape[0] * 0.6)]
    inked = (band < 245).any(axis=0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], inked.astype(int), [0]])))
    widths = edges[1::2] - edges[::2]
    return int((widths > pixels.shape[1] // 20).sum())
