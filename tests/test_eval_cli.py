"""``saliency eval`` end to end through the command's entry point (small runs)."""

import json

import pytest

from saliency.cli import main


def test_eval_on_the_demo_model_writes_tables_plots_and_results(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--methods", "vanilla,guided", "--n-images", "2", "--seed", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for title in ("Randomisation, cascading", "Randomisation, independent", "Class sensitivity",
                  "Image recovery", "Localisation", "Faithfulness"):
        assert title in printed
    files = {p.name for p in out.iterdir()}
    assert files == {"results.json", "tables.md", "randomisation.png", "randomisation-maps.png",
                     "class-sensitivity.png", "localisation.png", "faithfulness.png"}
    assert not any(name.endswith(".part") for name in files)
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "demo" and results["methods"] == ["vanilla", "guided"]
    assert results["n_images"] == 2 and results["seed"] == 1 and results["skipped"] == {}
    assert set(results["checks"]) == {"randomisation", "class-sensitivity", "localisation", "faithfulness"}
    cascade = results["checks"]["randomisation"]["cascading"]
    assert len(cascade["steps"]) == 8 and set(cascade["mean"]) == {"vanilla", "guided"}
    local = results["checks"]["localisation"]["scores"]
    assert set(local["pointing_game"]) == {"vanilla", "guided", "centre", "random"}
    faith = results["checks"]["faithfulness"]["scores"]
    assert set(faith["auc"]["deletion"]) == {"vanilla", "guided", "random"}
    assert "| method |" in (out / "tables.md").read_text()


def test_eval_on_a_random_torchvision_net_skips_localisation_and_says_why(tmp_path, capsys):
    code = main(["eval", "--model", "resnet18", "--weights", "random", "--methods", "vanilla",
                 "--checks", "localisation", "--n-images", "1", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped localisation" in printed and "does not classify the shapes" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["checks"] == {} and "localisation" in results["skipped"]


@pytest.mark.parametrize("argv, message", [
    (["--checks", "pointing"], "unknown check 'pointing'"),
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--model", "no_such_net"], "unknown model 'no_such_net'"),
])
def test_eval_bad_names_fail_with_one_line(tmp_path, capsys, argv, message):
    code = main(["eval", *argv, "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_eval_rejects_a_zero_image_count(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "--n-images", "0"])
    assert info.value.code == 2 and "at least 1" in capsys.readouterr().err


def test_eval_device_errors_are_one_line(capsys):
    assert main(["eval", "--device", "warp-drive"]) == 1
    err = capsys.readouterr().err
    assert "is not a torch device" in err and len(err.strip().splitlines()) == 1


def test_eval_with_random_weights_is_reproducible_for_a_seed(tmp_path, capsys):
    found = []
    for run, seed in enumerate((3, 3, 4)):
        out = tmp_path / str(run)
        assert main(["eval", "--weights", "random", "--checks", "localisation", "--methods", "vanilla",
                     "--n-images", "2", "--seed", str(seed), "--out", str(out)]) == 0
        found.append(json.loads((out / "results.json").read_text())["checks"]["localisation"])
    assert found[0] == found[1]
    assert found[0]["scores"]["relevance_mass"]["vanilla"] != found[2]["scores"]["relevance_mass"]["vanilla"]


def test_an_interrupted_eval_leaves_the_older_runs_files_as_they_were(tmp_path, capsys, monkeypatch):
    import saliency.evaluation.report as report

    out = tmp_path / "ev"
    argv = ["eval", "--methods", "vanilla", "--checks", "faithfulness,localisation", "--n-images", "1",
            "--out", f"{out}/"]
    assert main(argv) == 0
    assert f"to {out}/ (" in capsys.readouterr().out                 # one slash, however --out was spelled
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(before["results.json"])["files"] == ["results.json", "tables.md", "localisation.png",
                                                           "faithfulness.png"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "figure_png", interrupted)
    assert main([*argv, "--seed", "1"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # nothing half-written, no temporary folder
