"""File names for what the front ends write: labels and stems as safe pieces of a name."""

from __future__ import annotations

import re


def slug(text: str, empty: str = "class") -> str:
    """``text`` (a class label, a file stem) as a piece of a file name: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or empty
