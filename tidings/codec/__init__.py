"""The codec layer: events to bytes and back, knowing nothing of transports.

- :mod:`tidings.codec.structured`: structured-mode CloudEvents JSON, the one form an
  event has above the transports (``encode``/``decode``).
- :mod:`tidings.codec.binary`: CloudEvents binary mode (attributes in ``ce_*``
  headers, the data alone in the value), which the Kafka transport writes and reads
  and the NATS transport reads; converted to and from the structured bytes exactly.
"""

from __future__ import annotations

from tidings.codec.structured import (
    DEFAULT_MAX_EVENT_BYTES,
    decode,
    encode,
    encode_value,
    from_dict,
    to_dict,
)

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "decode", "encode", "encode_value", "from_dict", "to_dict"]
