"""What identifies a model's parameters: ``weights="random"`` is the same network in every process and run
(and leaves the caller's RNG alone), and a batch job records a weights file by its content, not its path."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from saliency.batch import StoreError, explain_dataset
from saliency.cli import main
from saliency.models import load_model
from saliency.models.weights import RANDOM_SEED, file_digest
from batchdata import rows, write_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINGERPRINT = """
import hashlib, sys
from saliency.models import load_model
model = load_model(sys.argv[1], weights="random")
digest = hashlib.sha256()
for key, value in model.module.state_dict().items():
    digest.update(key.encode())
    digest.update(value.detach().contiguous().numpy().tobytes())
print(digest.hexdigest())
"""


def fingerprint(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- weights="random" ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["demo", "resnet18"])
def test_random_weights_are_the_same_in_every_load_whatever_the_callers_seed(name):
    torch.manual_seed(1)
    first = load_model(name, weights="random")
    torch.manual_seed(2)
    second = load_model(name, weights="random")
    assert first.weights == second.weights == "random initialisation"
    assert same_state(first.module, second.module)


def test_random_weights_are_the_same_in_another_process():
    here = load_model("resnet18", weights="random")
    result = subprocess.run([sys.executable, "-c", FINGERPRINT, "resnet18"], capture_output=True, text=True,
                            check=True, cwd=REPO)
    assert result.stdout.strip() == fingerprint(here.module)


@pytest.mark.parametrize("name", ["demo", "resnet18"])
def test_loading_random_weights_leaves_the_callers_rng_where_it_was(name):
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    load_model(name, weights="random")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


def test_another_seed_gives_another_network_and_says_so():
    default = load_model("demo", weights="random")
    other = load_model("demo", weights="random", seed=RANDOM_SEED + 1)
    assert not same_state(default.module, other.module)
    assert other.weights == f"random initialisation (seed {RANDOM_SEED + 1})"
    assert same_state(other.module, load_model("demo", weights="random", seed=RANDOM_SEED + 1).module)


def test_a_weights_file_is_remembered_by_its_absolute_path(tmp_path, monkeypatch):
    torch.save(load_model("demo", weights="random").module.state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    assert load_model("demo", weights="w.pt").weights_file == str(tmp_path / "w.pt")
    assert load_model("demo", weights="random").weights_file == ""


# --- batch jobs: the weights in _job.json -------------------------------------------------------

def _save(folder, name="w.pt", seed=RANDOM_SEED):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save(load_model("demo", weights="random", seed=seed).module.state_dict(), path)
    return path


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", 3, size=64)


def _job(out):
    return json.loads((out / "_job.json").read_text())


def test_a_job_records_its_weights_file_by_content(tmp_path, images):
    weights = _save(tmp_path / "a")
    explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), weights=str(weights))
    assert _job(tmp_path / "out")["weights"] == "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    assert _job(tmp_path / "out")["weights"] == file_digest(weights)
    explain_dataset([str(tmp_path / "images")], str(tmp_path / "random"), weights="random")
    assert _job(tmp_path / "random")["weights"] == "random initialisation"


def test_the_same_weights_file_under_another_path_resumes_the_job(tmp_path, images, monkeypatch):
    weights = _save(tmp_path / "a")
    out = str(tmp_path / "out")
    first = explain_dataset([str(tmp_path / "images")], out, weights=str(weights))
    assert (first.explained, first.skipped) == (3, 0)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    relative = explain_dataset([str(tmp_path / "images")], out, weights=os.path.join("..", "a", "w.pt"))
    assert (relative.explained, relative.skipped) == (0, 3)
    copy = tmp_path / "copies" / "renamed.pt"
    copy.parent.mkdir()
    shutil.copyfile(weights, copy)
    copied = explain_dataset([str(tmp_path / "images")], out, weights=str(copy))
    assert (copied.explained, copied.skipped) == (0, 3)


def test_another_weights_file_of_the_same_name_is_refused_in_one_line(tmp_path, images, monkeypatch):
    _save(tmp_path / "a")
    _save(tmp_path / "b", seed=RANDOM_SEED + 1)  # another network, also called w.pt
    out = str(tmp_path / "out")
    monkeypatch.chdir(tmp_path / "a")
    explain_dataset([str(tmp_path / "images")], out, weights="w.pt")
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(StoreError, match=r"another job \(it differs in weights\)") as refused:
        explain_dataset([str(tmp_path / "images")], out, weights="w.pt")
    assert "\n" not in str(refused.value)
    assert rows(tmp_path / "out").num_rows == 3  # nothing of the other network's was added


def test_the_cli_refuses_another_weights_file_in_one_line(tmp_path, images, capsys):
    base = [str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--method", "vanilla"]
    assert main(["batch", *base, "--weights", str(_save(tmp_path / "a"))]) == 0
    capsys.readouterr()
    assert main(["batch", *base, "--weights", str(_save(tmp_path / "b", seed=RANDOM_SEED + 1))]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "differs in weights" in lines[0], err


def test_a_dest_written_before_weights_were_hashed_is_refused_in_one_line(tmp_path, images):
    weights = _save(tmp_path / "a")
    out = tmp_path / "out"
    explain_dataset([str(tmp_path / "images")], str(out), weights=str(weights))
    job = _job(out)
    job["weights"] = f"file '{weights}'"  # what _job.json said before
    (out / "_job.json").write_text(json.dumps(job, indent=2, sort_keys=True))
    with pytest.raises(StoreError, match=r"differs in weights\)") as refused:
        explain_dataset([str(tmp_path / "images")], str(out), weights=str(weights))
    assert "\n" not in str(refused.value)


def test_two_jobs_on_random_resnet18_give_the_same_results(tmp_path, images):
    options = dict(model="resnet18", weights="random", input_size=64, methods=["vanilla"], topk=1)
    explain_dataset([str(tmp_path / "images")], str(tmp_path / "one"), **options)
    explain_dataset([str(tmp_path / "images")], str(tmp_path / "two"), **options)
    one, two = rows(tmp_path / "one").to_pylist(), rows(tmp_path / "two").to_pylist()
    assert [r["predictions"] for r in one] == [r["predictions"] for r in two]
    assert [r["map_vanilla"] for r in one] == [r["map_vanilla"] for r in two]
    assert _job(tmp_path / "one") == _job(tmp_path / "two")
