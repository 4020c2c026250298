"""``python -m audioae ...`` is the ``audioae`` console script (pyproject's ``audioae.cli:main``)."""

import sys

from audioae.cli import main

sys.exit(main())
