"""Test helpers for users of tidings: the transport conformance suite and helpers to
run an app in a test.

- :class:`TransportConformance`: what every transport must do (subclass it with a
  ``url`` fixture to check a transport of your own).
- :func:`eventually`, :func:`running`, :func:`drain`: wait for a condition, run an
  app's worker in the background, fetch records.
"""

from __future__ import annotations

from tidings.testing.conformance import TransportConformance
from tidings.testing.helpers import drain, eventually, running

__all__ = [
    "TransportConformance",
    "drain",
    "eventually",
    "running",
]
