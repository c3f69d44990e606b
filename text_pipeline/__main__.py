"""``python -m text_pipeline``: see :mod:`text_pipeline.cli`."""

import sys

from text_pipeline.cli import main

sys.exit(main())
