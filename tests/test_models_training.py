"""The shapes data set and the demo training code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from saliency.models import load_model, shapes
from saliency.models.demo import ShapesNet, fold_batch_norm
from saliency.models.examples import EXAMPLES_SIZE, write_examples
from saliency.models.train import main, to_inputs, train_demo


def test_samples_are_a_pure_function_of_seed_and_index():
    a, b = shapes.make_sample(5, seed=3), shapes.make_sample(5, seed=3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.label == b.label
    assert not np.array_equal(a.image, shapes.make_sample(5, seed=4).image)
    assert not np.array_equal(a.image, shapes.make_sample(6, seed=3).image)
    images, labels, masks = shapes.make_batch(4, seed=3, start=3)
    assert np.array_equal(images[2], a.image) and labels[2] == a.label and np.array_equal(masks[2], a.mask)


def test_batches_are_balanced_and_well_formed():
    images, labels, masks = shapes.make_batch(64, seed=1)
    assert images.shape == (64, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (64, 64, 64) and masks.dtype == bool
    assert np.bincount(labels, minlength=len(shapes.CLASSES)).tolist() == [8] * len(shapes.CLASSES)
    chunks = list(shapes.iter_batches(10, seed=1, stop=25))
    assert [len(c[1]) for c in chunks] == [10, 10, 5]
    assert np.array_equal(np.concatenate([c[0] for c in chunks]), images[:25])


@pytest.mark.parametrize("size", [64, 96])
def test_masks_are_non_empty_inside_the_image_and_mark_the_object(size):
    for index in range(48):
        sample = shapes.make_sample(index, seed=9, size=size)
        area = sample.mask.mean()
        assert 0.01 < area < 0.4, (index, sample.name, area)
        # the whole object lies inside the picture: its mask never touches the border
        assert not (sample.mask[0].any() or sample.mask[-1].any()
                    or sample.mask[:, 0].any() or sample.mask[:, -1].any())
        # the object is one solid colour (up to noise and shading): the mask marks it
        inside = sample.image[sample.mask].astype(float)
        assert inside.std(axis=0).max() < 40, (index, sample.name)


def test_classes_have_their_shapes():
    areas = {}
    for index in range(len(shapes.CLASSES) * 6):
        sample = shapes.make_sample(index, seed=2)
        ys, xs = np.nonzero(sample.mask)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        areas.setdefault(sample.name, []).append(sample.mask.sum() / box)
    fill = {name: float(np.mean(values)) for name, values in areas.items()}
    # a disc fills about pi/4 of its bounding box, a ring and a star much less
    assert 0.7 < fill["circle"] < 0.85
    assert fill["ring"] < fill["circle"] - 0.15 and fill["star"] < fill["circle"] - 0.2


def test_batch_norm_folds_into_the_plain_network():
    torch.manual_seed(0)
    trained = ShapesNet(batch_norm=True)
    for module in trained.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
    trained.eval()
    plain = fold_batch_norm(trained)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert plain.state_dict().keys() == ShapesNet().state_dict().keys()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(trained(x), plain(x), atol=1e-4)


def test_overlapping_max_pool_is_in_the_demo_network():
    pools = [m for m in ShapesNet().modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert any(p.kernel_size == 3 and p.stride == 2 for p in pools)


def test_tiny_retrain_lowers_the_loss_and_saves_loadable_weights(tmp_path):
    threads = torch.get_num_threads()
    result = train_demo(tmp_path / "tiny.pt", steps=60, batch_size=32, train_images=128, test_images=32,
                        seed=1, learning_rate=1e-2, widths=(8, 8, 16, 16), threads=1, log=None)
    assert torch.get_num_threads() == threads
    assert result.final_loss < result.first_loss - 0.08
    assert 0.0 <= result.test_accuracy <= 1.0 and result.steps == 60
    state = torch.load(tmp_path / "tiny.pt", weights_only=True)
    assert not any("running_mean" in key for key in state)          # saved folded
    tiny = ShapesNet(widths=(8, 8, 16, 16))
    tiny.load_state_dict(state)
    assert tiny(to_inputs(shapes.make_batch(2)[0])).shape == (2, len(shapes.CLASSES))


def test_training_command_line(tmp_path, capsys):
    out = tmp_path / "cli.pt"
    assert main(["--out", str(out), "--steps", "3", "--batch-size", "8", "--train-images", "16",
                 "--test-images", "8", "--threads", "1"]) == 0
    assert load_model("demo", weights=out).num_classes == len(shapes.CLASSES)
    assert out.is_file() and "test accuracy" in capsys.readouterr().out


def test_bundled_examples_are_the_generator_output_and_classified_right(tmp_path):
    written = write_examples(tmp_path)
    model = load_model("demo")
    for path in written:
        bundled = np.asarray(Image.open(f"examples/{path.name}"))
        assert np.array_equal(bundled, np.asarray(Image.open(path)))
        mask = np.asarray(Image.open(f"examples/{path.stem}.mask.png"))
        assert mask.shape == (EXAMPLES_SIZE, EXAMPLES_SIZE) and set(np.unique(mask)) == {0, 255}
        with torch.no_grad():
            predicted = int(model.module(model.prepare(Image.open(path).convert("RGB")).tensor).argmax())
        assert model.labels[predicted] == path.stem
