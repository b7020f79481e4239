"""The documentation names every registered method and option, so the table and the docs agree."""

from pathlib import Path

import saliency

DOCS = (Path(__file__).parent.parent / "docs" / "methods.md").read_text()


def test_every_method_and_option_is_documented():
    for name, method in saliency.REGISTRY.items():
        assert f"`{name}`" in DOCS, name
        for option, default in method.options.items():
            assert f"`{option}`" in DOCS and str(default) in DOCS, (name, option)
