"""saliency.batch on Ray Data, on a small local Ray started here: the same rows as the local engine."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only on this machine

import numpy as np
import pytest
import ray

from saliency.batch import explain_dataset
from batchdata import rows, write_images

METHODS = ["guided", "gradcam"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _same_rows(a, b):
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows
    for left, right in zip(a.to_pylist(), b.to_pylist()):
        for column, value in left.items():
            if column.startswith("map_") and column != "map_shape" and value is not None:
                scale = float(np.abs(np.asarray(right[column])).max()) or 1.0
                assert np.allclose(value, right[column], rtol=1e-3, atol=1e-5 * scale), (left["source"], column)
            elif column in ("probability", "predictions"):
                continue  # float noise between batch compositions; the classes are compared below
            else:
                assert value == right[column], (left["source"], column)
        assert [p["index"] for p in left["predictions"] or []] == [p["index"] for p in right["predictions"] or []]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout(240)
def test_ray_engine_writes_the_rows_the_local_engine_writes(tmp_path, local_ray, workers):
    write_images(tmp_path / "images", 9)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    sources = [str(tmp_path / "images"), str(tmp_path / "missing.png")]
    local = explain_dataset(sources, str(tmp_path / "local"), methods=METHODS, topk=2, batch_size=4, shard_size=4)
    remote = explain_dataset(sources, str(tmp_path / "ray"), methods=METHODS, topk=2, batch_size=4, shard_size=4,
                             engine="ray", workers=workers)
    assert (remote.explained, sorted(remote.failed)) == (local.explained, sorted(local.failed)) == (
        9, sorted([str(tmp_path / "images" / "broken.jpg"), str(tmp_path / "missing.png")]))
    assert remote.missing == []
    _same_rows(rows(tmp_path / "ray"), rows(tmp_path / "local"))
    again = explain_dataset(sources, str(tmp_path / "ray"), methods=METHODS, topk=2, engine="ray", workers=workers)
    assert (again.explained, again.skipped) == (0, 11)


@pytest.mark.timeout(240)
def test_ray_engine_resumes_what_the_local_engine_began(tmp_path, local_ray):
    images = write_images(tmp_path / "images", 6)
    out = str(tmp_path / "out")
    explain_dataset([str(p) for p in images[:2]], out, methods=["guided"])
    summary = explain_dataset([str(tmp_path / "images")], out, methods=["guided"], engine="ray", shard_size=2)
    assert (summary.explained, summary.skipped) == (4, 2)
    assert sorted(rows(tmp_path / "out").column("source").to_pylist()) == sorted(str(p) for p in images)


@pytest.mark.timeout(240)
def test_every_ray_actor_explains_with_the_drivers_weights(tmp_path, local_ray):
    """Random weights are drawn once, in the driver: each actor gets them from the object store."""
    import torch

    write_images(tmp_path / "images", 6)
    call = dict(methods=["guided"], weights="random", batch_size=2, shard_size=2)
    torch.manual_seed(0)
    explain_dataset([str(tmp_path / "images")], str(tmp_path / "local"), **call)
    torch.manual_seed(0)
    summary = explain_dataset([str(tmp_path / "images")], str(tmp_path / "ray"), engine="ray", workers=2, **call)
    assert (summary.explained, summary.failed) == (6, [])
    _same_rows(rows(tmp_path / "ray"), rows(tmp_path / "local"))


@pytest.mark.timeout(120)
def test_model_actors_start_with_the_malloc_settings_in_their_environment(local_ray):
    """Set at the process's start, they reach the Ray thread that calls the actor (mallopt in it would not)."""
    from saliency.batch.ray_engine import model_actor_options
    from saliency.memory import malloc_environment

    @ray.remote
    class Probe:
        def environment(self, names):
            return {name: os.environ.get(name) for name in names}

    options = model_actor_options(ray.cluster_resources()["CPU"], workers=2)
    assert options["num_cpus"] == 0.75 and options["num_gpus"] is None
    probe = Probe.options(**options).remote()
    expected = malloc_environment()
    assert expected and ray.get(probe.environment.remote(list(expected))) == expected
    ray.kill(probe)


@pytest.mark.timeout(240)
def test_relative_paths_are_the_drivers_not_the_workers(tmp_path, local_ray, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Ray workers started in another folder
    write_images(tmp_path / "images", 3)
    summary = explain_dataset(["images"], "out", methods=["guided"], png="pictures", engine="ray")
    assert summary.explained == 3 and summary.ok
    assert sorted(rows(tmp_path / "out").column("source").to_pylist()) == [f"images/img00{i}.png" for i in range(3)]
    assert len(os.listdir(tmp_path / "pictures")) == 3


def test_gpus_the_cluster_lacks_are_refused_before_dest(tmp_path, local_ray):
    from saliency.errors import SaliencyError

    write_images(tmp_path / "images", 1)
    with pytest.raises(SaliencyError, match="the Ray cluster has 0 GPU"):
        explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), engine="ray", gpus_per_worker=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(240)
def test_an_error_raised_in_a_model_actor_ends_the_job_with_its_own_message(tmp_path, local_ray):
    """A picture that cannot be written (a folder stands at its name): the job ends in the saliency error's line,
    not in Ray's retry advice."""
    from saliency.errors import SaliencyError

    images = write_images(tmp_path / "images", 2)
    explain_dataset([str(p) for p in images], str(tmp_path / "local"), methods=["guided"], png=str(tmp_path / "seen"))
    for name in os.listdir(tmp_path / "seen"):
        (tmp_path / "pictures" / name).mkdir(parents=True)
    with pytest.raises(SaliencyError) as raised:
        explain_dataset([str(p) for p in images], str(tmp_path / "ray"), methods=["guided"],
                        png=str(tmp_path / "pictures"), engine="ray")
    message = str(raised.value)
    assert message.startswith("cannot write picture '") and "in --png" in message, message
    assert "\n" not in message
