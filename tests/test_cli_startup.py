"""What the ``saliency`` command imports before it works: help texts need no torch, the demo no model zoo."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saliency.cli import build_parser, main
from saliency.cli.options import set_threads
from saliency.errors import OptionError

STAR = Path(__file__).resolve().parents[1] / "examples" / "star.png"
HEAVY = ("torch", "torchvision", "captum", "matplotlib", "pyarrow")


def imported_after(code: str) -> set[str]:
    """The heavy top-level modules a fresh interpreter has imported after running ``code``."""
    script = f"{code}\nimport sys\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(done.stderr.splitlines()[-1].split()[1:])


def command_names() -> list[str]:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(commands.choices)


def test_help_of_the_command_and_of_every_subcommand_imports_no_torch():
    names = command_names()
    assert {"explain", "compare", "batch", "eval", "models", "serve", "train-demo"} <= set(names)
    code = ("from saliency.cli import main\n"
            f"for argv in [['--help']] + [[name, '--help'] for name in {names!r}]:\n"
            "    try:\n        main(argv)\n    except SystemExit as exit_:\n        assert exit_.code == 0, argv\n")
    assert imported_after(code) == set()


def test_import_saliency_is_lazy_and_every_export_resolves():
    assert imported_after("import saliency, saliency.cli, saliency.methods") == set()
    assert imported_after("from saliency import METHODS, SaliencyError") == set()
    import saliency

    for name in saliency.__all__:
        assert getattr(saliency, name) is not None
    assert "explain" in dir(saliency)
    from saliency import explain, explain_classes  # noqa: F401 - the documented spelling
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        saliency.nothing  # noqa: B018


def test_explain_with_the_demo_imports_neither_torchvision_nor_captum(tmp_path):
    code = f"from saliency.cli import main\nassert main(['explain', {str(STAR)!r}, '--out', {str(tmp_path)!r}]) == 0"
    loaded = imported_after(code)
    assert "torch" in loaded and not loaded & {"torchvision", "captum"}
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_integrated_gradients_still_finds_captum(tmp_path):
    code = ("from saliency.cli import main\n"
            f"assert main(['explain', {str(STAR)!r}, '--method', 'integrated_gradients', '--option', 'steps=4',"
            f" '--out', {str(tmp_path)!r}]) == 0")
    assert "captum" in imported_after(code)


def threads_for(monkeypatch, *argv: str, env: str | None = None) -> int | None:
    monkeypatch.delenv("SALIENCY_TORCH_THREADS", raising=False)
    if env is not None:
        monkeypatch.setenv("SALIENCY_TORCH_THREADS", env)
    parser = argparse.ArgumentParser()
    from saliency.cli.options import add_threads_option

    add_threads_option(parser)
    parser.add_argument("--model", default="demo")
    return set_threads(parser.parse_args(list(argv)))


def test_threads_come_from_the_option_then_the_variable_then_the_model(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads_for(monkeypatch, "--threads", "3") == 3 and torch.get_num_threads() == 3
        assert threads_for(monkeypatch, env="2") == 2 and torch.get_num_threads() == 2
        assert threads_for(monkeypatch, "--threads", "3", env="2") == 3
        assert threads_for(monkeypatch) == 1  # the bundled demo: more threads only wait on each other
        torch.set_num_threads(before)
        assert threads_for(monkeypatch, "--model", "resnet18") is None and torch.get_num_threads() == before
        with pytest.raises(OptionError, match="SALIENCY_TORCH_THREADS"):
            threads_for(monkeypatch, env="many")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["explain", "compare", "eval"])
def test_each_model_command_runs_on_the_threads_asked_and_leaves_torch_as_it_was(monkeypatch, capsys, tmp_path,
                                                                                command):
    import saliency.engine
    import saliency.pipeline

    seen = []
    real = saliency.engine.explain_classes

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    for module in (saliency.engine, saliency.pipeline):  # the pipeline holds its own reference
        monkeypatch.setattr(module, "explain_classes", spy)
    before = torch.get_num_threads()
    argv = {"explain": ["explain", str(STAR), "--out", str(tmp_path)],
            "compare": ["compare", str(STAR), "--out", str(tmp_path / "c.png")],
            "eval": ["eval", "--n-images", "1", "--methods", "vanilla", "--checks", "faithfulness",
                     "--out", str(tmp_path)]}[command]
    assert main([*argv, "--threads", "2"]) == 0
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == before


def test_serve_takes_torch_threads_and_a_device(monkeypatch, capsys):
    import saliency.api

    calls = []
    monkeypatch.setattr(saliency.api, "serve", lambda **kwargs: calls.append(kwargs))
    assert main(["serve", "--port", "8123", "--torch-threads", "1", "--device", "cpu"]) == 0
    assert calls[0]["torch_threads"] == 1 and calls[0]["device"] == "cpu"
    assert "http://127.0.0.1:8123/" in capsys.readouterr().out
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert "torch_threads" not in calls[1] and "device" not in calls[1]
    assert "http://localhost:8123/" in capsys.readouterr().out


def test_ctrl_c_closes_the_progress_bar_before_saying_so(monkeypatch, capsys):
    import saliency.cli.list_models
    from tqdm import tqdm

    def interrupted(args):
        bar = tqdm(total=3, file=sys.stderr, disable=False, leave=False)
        bar.update(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(saliency.cli.list_models, "run", interrupted)
    assert main(["models"]) == 130
    err = capsys.readouterr().err
    before, _, _ = err.rpartition("saliency: interrupted")
    assert "/3" in before
    assert before.replace("\r", "\n").rsplit("\n", 1)[-1].strip() == ""  # the message starts its own line
