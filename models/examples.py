"""Write the bundled example pictures: ``python -m saliency.models.examples [FOLDER]``.

One 128×128 shapes image per class (``star.png``, ``circle.png``, ...) with its object mask
(``star.mask.png``: white = object), drawn with :data:`EXAMPLES_SEED` — a seed used neither for
training nor for the test set. The demo model resizes them to its 64×64 input.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

from saliency.models import shapes

EXAMPLES_SEED = 2024
EXAMPLES_SIZE = 128


def write_examples(folder: str | os.PathLike = "examples", seed: int = EXAMPLES_SEED,
                   size: int = EXAMPLES_SIZE) -> list[Path]:
    """Write one image and one mask per class into ``folder``; returns the image paths."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for index, name in enumerate(shapes.CLASSES):
        sample = shapes.make_sample(index, seed=seed, size=size)   # index i has class i
        _save(sample.pil(), target / f"{name}.png")
        _save(sample.mask_pil(), target / f"{name}.mask.png")
        written.append(target / f"{name}.png")
    return written


def _save(image: Image.Image, path: Path) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, 0o644)
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG", optimize=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    for written_path in write_examples(sys.argv[1] if len(sys.argv) > 1 else "examples"):
        print(written_path)
