"""What the server tests read off a running server, shared: a Prometheus sample, and a bounded wait."""

from __future__ import annotations

import time


def sample_value(text: str, sample: str, absent: float | None = None) -> float:
    """One sample (``name{labels}``) of a Prometheus text page; ``absent`` when the page has no
    such line (a labelled counter appears only once counted), else an error."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    if absent is None:
        raise AssertionError(f"no {sample} on the metrics page:\n{text}")
    return absent


def wait_until(condition, timeout: float, poll: float = 0.01) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` passes: a bound on waiting, not on speed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(poll)
    return bool(condition())
