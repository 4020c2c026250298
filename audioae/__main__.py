"""``python -m audioae ...`` is the ``audioae`` console script (pyproject's ``audioae.cli:run``)."""

from audioae.cli import run

run()
