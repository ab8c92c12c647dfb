"""The envelope codec against the JSON libraries (decision 0001)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel

from bench._common import (
    EVENT_TYPE,
    Figure,
    log,
    payload,
    per_call_us,
)
from bench._setup import Config, Workdir
from tidings import Tidings
from tidings.codec import decode, encode

# -- micro: the envelope codec ---------------------------------------------------------


class _OrderV3(BaseModel):
    """An order as v3 reads it; v1 and v2 are read through two upcasters (issue 18)."""

    order_id: str
    customer_id: str
    amount_cents: int
    currency: str
    items: list[dict[str, Any]]


def _to_v2(v1: dict[str, Any]) -> dict[str, Any]:
    v1["amount_cents"] = round(v1.pop("amount") * 100)
    return v1


def _to_v3(v2: dict[str, Any]) -> dict[str, Any]:
    return {**v2, "currency": "EUR"}


def _upcast_fns(app: Tidings) -> dict[str, Callable[[], Any]]:
    """Decoding an order written as v1 (two upcasters, then v3's model) and the same
    order written as v3 (its model alone): envelope and payload, as a handler gets it."""
    app.event("order.placed", version=3, subject="order_id")(_OrderV3)
    app.upcaster("order.placed", from_version=1)(_to_v2)
    app.upcaster("order.placed", from_version=2)(_to_v3)
    items = [{"sku": f"sku-{i}", "quantity": i + 1} for i in range(3)]
    v1 = {"order_id": "o-1", "customer_id": "c-1", "amount": 12.5, "items": items}
    v3 = _OrderV3(order_id="o-1", customer_id="c-1", amount_cents=1250, currency="EUR", items=items)
    raw1 = encode(app.build(v1, type="order.placed", version=1, subject="o-1"))
    raw3 = encode(app.build(v3))
    registry = app.registry
    assert registry.decode_payload("order.placed", 1, decode(raw1).data) == v3

    def read(raw: bytes) -> Any:
        event = decode(raw)
        return registry.decode_payload(event.type, event.dataversion, event.data, shared=False)

    return {"decode_upcast": lambda: read(raw1), "decode_v3": lambda: read(raw3)}


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def fig_codec(cfg: Config, work: Workdir) -> list[Figure]:

    from tidings.codec import from_dict, to_dict

    app = Tidings("memory://", service="taskapi")
    event = app.build(payload(1), type=EVENT_TYPE, subject="task-00000001")
    raw = encode(event)
    doc = json.loads(raw)
    registry, data = app.registry, event.data

    def stdlib_encode() -> bytes:
        return json.dumps(to_dict(event), separators=(",", ":"), default=_json_default).encode()

    def stdlib_decode() -> Any:
        return from_dict(json.loads(raw))

    fns: dict[str, Callable[[], Any]] = {
        "encode": lambda: encode(event),
        "decode": lambda: decode(raw),
        "stdlib_encode": stdlib_encode,
        "stdlib_decode": stdlib_decode,
        # The JSON libraries alone on the same envelope as a plain dict (decision 0001).
        "json_encode": lambda: json.dumps(doc, separators=(",", ":")).encode(),
        "json_decode": lambda: json.loads(raw),
        "orjson_encode": lambda: orjson.dumps(doc),
        "orjson_decode": lambda: orjson.loads(raw),
        # A raw (unregistered) payload as a handler gets it: its own, or a copy when
        # another handler call could see it (issue 17).
        "payload_raw": lambda: registry.decode_payload(EVENT_TYPE, None, data, shared=False),
        "payload_raw_copied": lambda: registry.decode_payload(EVENT_TYPE, None, data),
        **_upcast_fns(app),
    }
    try:
        import msgspec

        encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder()
        fns["msgspec_encode"] = lambda: encoder.encode(doc)
        fns["msgspec_decode"] = lambda: decoder.decode(raw)
    except ImportError:
        log("  msgspec is not installed: left out of the library comparison")
    us = per_call_us(fns, cfg.micro_number, cfg.micro_repeat)
    enc, dec, enc_json, dec_json = (
        us["encode"], us["decode"], us["stdlib_encode"], us["stdlib_decode"]
    )  # fmt: skip
    size = {"envelope_bytes": len(raw)}
    figures = [
        Figure(
            "codec_encode",
            enc,
            "us/event",
            enc_json,
            "the same codec on stdlib json",
            ("ratio", "<=", 1),
            {**size, "what": "tidings.codec.encode(Event) -> bytes"},
        ),
        Figure(
            "codec_decode",
            dec,
            "us/event",
            dec_json,
            "the same codec on stdlib json",
            ("ratio", "<=", 1),
            {**size, "what": "tidings.codec.decode(bytes) -> Event (validated)"},
        ),
    ]
    figures.append(
        Figure(
            "payload_raw_one_handler",
            us["payload_raw"],
            "us/call",
            us["payload_raw_copied"],
            "the same payload copied (an orjson round trip), as every call had it",
            None,
            {"what": "Registry.decode_payload of an unregistered ~300-byte dict"},
        )
    )
    figures.append(
        Figure(
            "decode_upcast_v1_to_v3",
            us["decode_upcast"],
            "us/event",
            us["decode_v3"],
            "the same order written as v3, decoded with its model alone",
            None,
            {
                "what": "codec.decode + Registry.decode_payload of a v1 order read as v3 "
                "through two upcasters"
            },
        )
    )
    libs = [name for name in ("json", "orjson", "msgspec") if f"{name}_encode" in us]
    times = {name: (us[f"{name}_encode"], us[f"{name}_decode"]) for name in libs}
    for op, k in (("encode", 0), ("decode", 1)):
        for name, pair in times.items():
            figures.append(
                Figure(
                    f"lib_{op}_{name}",
                    pair[k],
                    "us/envelope",
                    times["json"][k],
                    "stdlib json",
                    None,
                    size if name == "json" else {},
                )
            )
    log(
        "  "
        + ", ".join(f"{name} {e:.2f}/{d:.2f} us" for name, (e, d) in times.items())
        + f"; tidings codec {enc:.2f}/{dec:.2f} us (encode/decode)"
    )
    return figures
