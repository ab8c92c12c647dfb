"""Test helpers for users of tidings: the transport conformance suite, helpers to run
an app in a test, and a fault-injection kit with an invariant checker.

- :class:`TransportConformance`: what every transport must do (subclass it with a
  ``url`` fixture to check a transport of your own).
- :func:`eventually`, :func:`running`, :func:`drain`, :func:`stored`: wait for a
  condition, run an app's worker in the background, fetch records, read a topic.
- :class:`FaultyTransport`, :class:`FaultPlan`, :class:`SteppedClock`, :class:`Killed`:
  run handlers on a transport that fails, delays, redelivers and kills, from a seed.
- :class:`Invariants`: assert that nothing acknowledged was lost, that per-key order
  held and that effects happened once (docs/reliability.md, "Running your handlers
  under faults").
"""

from __future__ import annotations

from tidings.testing.clock import SteppedClock
from tidings.testing.conformance import TransportConformance
from tidings.testing.fault_plan import FaultPlan, InjectedFault, Killed
from tidings.testing.faults import FaultyTransport
from tidings.testing.faulty_consumer import FaultyConsumer
from tidings.testing.helpers import drain, eventually, running, stored
from tidings.testing.invariants import Invariants, Report

__all__ = [
    "FaultPlan",
    "FaultyConsumer",
    "FaultyTransport",
    "InjectedFault",
    "Invariants",
    "Killed",
    "Report",
    "SteppedClock",
    "TransportConformance",
    "drain",
    "eventually",
    "running",
    "stored",
]
