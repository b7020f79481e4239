"""``saliency batch`` as a user runs it: help with examples, one-line errors, a summary and its exit status."""

import subprocess
import sys

import pytest

from saliency.cli import main
from batchdata import rows, write_images


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["batch", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "examples:" in out and "saliency batch photos/ --out maps.parquet" in out and "--engine ray" in out


def test_a_run_prints_a_summary_and_fails_when_a_source_failed(tmp_path, capsys):
    write_images(tmp_path / "images", 3)
    (tmp_path / "images" / "broken.png").write_bytes(b"no picture")
    code, out, err = run(capsys, "batch", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                         "--method", "guided", "--topk", "2")
    assert code == 1
    assert "3 images explained, 1 failed, 0 already in" in out
    assert err.strip().splitlines()[-1].startswith("saliency: error: 1 of 4 sources could not be explained")
    assert rows(tmp_path / "out").num_rows == 3 * 2 + 1
    code, out, _ = run(capsys, "batch", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                       "--method", "guided", "--topk", "2")
    assert (code, "0 images explained, 0 failed, 4 already in" in out) == (1, True)  # the failure is still there


def test_targets_by_label_and_max_abs(tmp_path, capsys):
    write_images(tmp_path / "images", 2)
    code, _, _ = run(capsys, "batch", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--target", "star",
                     "--target", "0", "--reduce", "max-abs", "--method", "vanilla")
    table = rows(tmp_path / "out")
    assert code == 0 and sorted(table.column("label").to_pylist()) == ["circle", "circle", "star", "star"]
    assert table.column("map_shape").to_pylist()[0] == [64, 64]


@pytest.mark.parametrize("argv, message", [
    (["--engine", "local", "--workers", "2"], "need --engine ray"),
    (["--method", "nosuch"], "unknown method 'nosuch'"),
    (["--target", "unicorn"], "unknown class 'unicorn'"),
    (["--model", "nosuchnet"], "nosuchnet"),
    (["--option", "samples=many", "--method", "smoothgrad"], "option 'samples' must be a whole number"),
])
def test_bad_settings_are_one_error_line(tmp_path, capsys, argv, message):
    write_images(tmp_path / "images", 1)
    code, _, err = run(capsys, "batch", str(tmp_path / "images"), "--out", str(tmp_path / "out"), *argv)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("saliency: error: ") and message in lines[0], err


@pytest.mark.parametrize("argv, message", [(["--topk", "0"], "--topk"), (["--engine", "spark"], "--engine"),
                                           (["--reduce", "mean"], "--reduce"), ([], "--out")])
def test_malformed_flags_are_argparse_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        main(["batch", str(tmp_path)] + (["--out", str(tmp_path / "o")] if argv else []) + argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_sources_that_name_nothing_are_one_error_line(tmp_path, capsys):
    code, _, err = run(capsys, "batch", str(tmp_path / "none" / "*.png"), "--out", str(tmp_path / "out"))
    assert code == 1 and err.strip() == f"saliency: error: no image file matches '{tmp_path / 'none' / '*.png'}'; check the pattern"


def test_the_ray_engine_without_ray_says_how_to_install_it(tmp_path):
    write_images(tmp_path / "images", 1)
    script = ("import sys; sys.modules['ray'] = None; from saliency.cli import main; "
              f"sys.exit(main(['batch', {str(tmp_path / 'images')!r}, '--out', {str(tmp_path / 'out')!r}, "
              "'--engine', 'ray']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == ("saliency: error: --engine ray needs Ray Data, which is not installed; "
                                   "install it with: pip install 'saliency[ray]'")
