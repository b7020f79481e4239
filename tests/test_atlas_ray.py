"""The feature atlas's scan on Ray Data, on a small local Ray started here: the same atlas as the local engine."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only on this machine

import pytest
import ray

from saliency.atlas import feature_atlas
from saliency.models import load_model
from saliency.models.shapes import make_sample


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.timeout(240)
def test_the_ray_scan_finds_the_same_activations_as_the_local_one(local_ray, tmp_path):
    for i in range(20):
        make_sample(i, seed=13).pil().save(tmp_path / f"{i:02d}.png")
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    model = load_model("demo")
    kwargs = {"top_channels": 4, "top": 3, "batch_size": 6}
    local = feature_atlas(model, [str(tmp_path)], ["features.7", "classifier"], **kwargs)
    on_ray = feature_atlas(model, [str(tmp_path)], ["features.7", "classifier"], engine="ray", workers=2, **kwargs)
    assert on_ray.failed == local.failed == [str(tmp_path / "broken.png")]
    for ours, theirs in zip(on_ray.to_json()["layers"], local.to_json()["layers"], strict=True):
        assert [c["channel"] for c in ours["channels"]] == [c["channel"] for c in theirs["channels"]]
        for a, b in zip(ours["channels"], theirs["channels"]):
            assert a["strength"] == pytest.approx(b["strength"], rel=1e-5)
            for u, v in zip(a["units"], b["units"], strict=True):  # the same images, places and boxes
                assert (u["image"], u["unit"], u["box"]) == (v["image"], v["unit"], v["box"])
                assert u["activation"] == pytest.approx(v["activation"], rel=1e-5)  # batches round differently
