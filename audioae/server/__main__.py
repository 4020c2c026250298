"""``python -m audioae.server ...`` is ``audioae serve ...``."""

import sys

from audioae.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
