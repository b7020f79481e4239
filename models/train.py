"""Train the demo classifier on the shapes data set: ``python -m saliency.models.train``.

:func:`train_demo` is the one function behind this script and ``saliency train-demo``. Training
images are drawn once from the generator (seed ``seed``), augmented with the eight flips/rotations
that leave every class unchanged, and fed to AdamW with a one-cycle learning-rate schedule; the
result is measured on a fresh test set drawn with another seed and saved atomically as a state dict.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from saliency.models import shapes
from saliency.models.demo import PREPROCESSING, WEIGHTS_PATH, WIDTHS, ShapesNet, fold_batch_norm

TEST_SEED = 1_000_003
"""Seed of the held-out test set (training uses other seeds)."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_demo` did: where the weights went and how well they do."""

    path: Path | None
    steps: int
    seconds: float
    final_loss: float
    first_loss: float
    test_accuracy: float
    test_images: int


DEFAULT_OUT = "demo-weights.pt"
"""Where training writes without an ``--out``: a new file in the current folder, never the bundled weights."""


def new_weights_path(folder: str | os.PathLike = ".") -> Path:
    """``folder/demo-weights.pt``, or the first of ``demo-weights-2.pt``, ``-3`` ... that does not exist yet."""
    stem, suffix = os.path.splitext(DEFAULT_OUT)
    candidate, n = Path(folder) / DEFAULT_OUT, 1
    while candidate.exists():
        n += 1
        candidate = Path(folder) / f"{stem}-{n}{suffix}"
    return candidate


def train_demo(out_path: str | os.PathLike | None, *, steps: int = 1500,
               batch_size: int = 64, train_images: int = 20_000, test_images: int = 2000,
               seed: int = 0, learning_rate: float = 3e-3, threads: int | None = 2,
               widths: tuple[int, ...] | None = None, eval_every: int | None = None,
               log: Callable[[str], None] | None = print) -> TrainResult:
    """Train :class:`~saliency.models.demo.ShapesNet` from scratch and save its state dict to ``out_path``.

    ``steps`` optimiser steps of ``batch_size`` images from a pool of ``train_images`` generated with
    ``seed``; accuracy is measured on ``test_images`` fresh images (seed :data:`TEST_SEED`).
    ``out_path=None`` skips saving (the bundled weights, :data:`~saliency.models.demo.WEIGHTS_PATH`,
    are written only when named). ``threads`` caps torch's CPU threads (``None``: leave as is).
    ``log`` receives progress lines (``None``: silent); ``eval_every`` also logs the test accuracy
    every so many steps. Deterministic for a given seed and thread count.
    """
    if steps < 1 or batch_size < 1 or train_images < 1:
        raise ValueError("steps, batch_size and train_images must be positive")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(out_path, steps=steps, batch_size=batch_size, train_images=train_images,
                      test_images=test_images, seed=seed, learning_rate=learning_rate, widths=widths,
                      eval_every=eval_every, say=log or (lambda _line: None))
    finally:
        torch.set_num_threads(previous_threads)


def _train(out_path: str | os.PathLike | None, *, steps: int, batch_size: int, train_images: int,
           test_images: int, seed: int, learning_rate: float, widths: tuple[int, ...] | None,
           eval_every: int | None, say: Callable[[str], None]) -> TrainResult:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()

    say(f"generating {train_images} training images (seed {seed}) ...")
    pool, labels, _ = shapes.make_batch(train_images, seed=seed)   # kept as uint8: 12 kB an image
    targets = torch.from_numpy(labels)

    model = ShapesNet(widths=widths or WIDTHS, batch_norm=True)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate, total_steps=steps,
                                                   pct_start=0.15)
    losses: list[float] = []
    report_every = max(1, steps // 10)
    for step in range(1, steps + 1):
        chosen = rng.integers(0, train_images, batch_size)
        x = _dihedral(to_inputs(pool[chosen]), int(rng.integers(0, 8)))
        loss = nn.functional.cross_entropy(model(x), targets[torch.from_numpy(chosen)], label_smoothing=0.05)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % report_every == 0 or step == steps:
            recent = float(np.mean(losses[-report_every:]))
            say(f"step {step}/{steps}  loss {recent:.4f}  {time.perf_counter() - start:.0f}s")
        if eval_every and step % eval_every == 0 and step < steps:
            say(f"step {step}/{steps}  test accuracy {evaluate(model, min(test_images, 1000)):.2%}")

    model = fold_batch_norm(model.eval())
    accuracy = evaluate(model, test_images)
    say(f"test accuracy {accuracy:.2%} on {test_images} fresh images (seed {TEST_SEED})")
    path = None
    if out_path is not None:
        path = Path(out_path)
        save_state_dict(model, path)
        say(f"saved weights to {path}")
    head = max(1, min(20, steps // 10))
    return TrainResult(path=path, steps=steps, seconds=time.perf_counter() - start,
                       first_loss=float(np.mean(losses[:head])), final_loss=float(np.mean(losses[-head:])),
                       test_accuracy=accuracy, test_images=test_images)


def to_inputs(images: np.ndarray) -> Tensor:
    """uint8 ``[N, H, W, 3]`` shapes images → normalised float ``[N, 3, H, W]`` model inputs.

    The same arithmetic as :data:`~saliency.models.demo.PREPROCESSING` on a 64×64 picture.
    """
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(PREPROCESSING.mean)[:, None, None]
    std = torch.tensor(PREPROCESSING.std)[:, None, None]
    return ((x - mean) / std).contiguous()


@torch.no_grad()
def evaluate(model: nn.Module, count: int = 2000, seed: int = TEST_SEED, batch_size: int = 250) -> float:
    """Top-1 accuracy of ``model`` on ``count`` shapes images drawn with ``seed``."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for images, labels, _ in shapes.iter_batches(batch_size, seed=seed, stop=count):
            predicted = model(to_inputs(images)).argmax(dim=1)
            correct += int((predicted == torch.from_numpy(labels)).sum())
    finally:
        model.train(was_training)
    return correct / count


def save_state_dict(model: nn.Module, path: Path) -> None:
    """Write ``model``'s state dict to ``path`` atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, 0o644)
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _dihedral(x: Tensor, which: int) -> Tensor:
    """One of the 8 flips/rotations of the square (every shapes class is closed under them)."""
    if which >= 4:
        x = x.flip(-1)
    return torch.rot90(x, which % 4, dims=(-2, -1)) if which % 4 else x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saliency.models.train",
                                     description="Train the demo shapes classifier.")
    parser.add_argument("--out", help=f"where to write the state dict (default: a new {DEFAULT_OUT} here; "
                                      f"the bundled weights are {WEIGHTS_PATH})")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=20_000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=None, help="log the test accuracy every N steps")
    args = parser.parse_args(argv)
    result = train_demo(args.out or new_weights_path(), steps=args.steps, batch_size=args.batch_size,
                        train_images=args.train_images, test_images=args.test_images, seed=args.seed,
                        learning_rate=args.lr, threads=args.threads, eval_every=args.eval_every)
    return 0 if math.isfinite(result.final_loss) else 1


if __name__ == "__main__":
    sys.exit(main())
