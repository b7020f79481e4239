"""``python -m saliency.cli``: the ``saliency`` command."""

import sys

from saliency.cli import main

sys.exit(main())
