"""CloudEvents binary mode (the Kafka protocol binding's form), in the codec layer.

Above the transport an event is structured-mode JSON bytes (``tidings.codec.encode``).
On Kafka it is written in one of two modes:

- **binary** (the default): attributes in ``ce_<name>`` headers (UTF-8 strings),
  ``datacontenttype`` in the ``content-type`` header, the data alone in the value;
- **structured**: the JSON document as the value, ``content-type:
  application/cloudevents+json``.

Reading accepts both, whatever the transport writes: a record with a ``ce_specversion``
header is binary, any other is structured. The transport hands back the bytes it was
given, so binary mode is used only when reading the record rebuilds them exactly
(attributes in the document's order, ``dataversion`` as a number): anything else (other
JSON spacing, non-string extensions, bytes data declared as JSON, ...) is written
structured. Conversion never raises: a binary record with bad headers is read as a
JSON document that ``tidings.codec.decode`` rejects with a DecodeError, keeping the
headers and the value for the dead letter.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Any

import orjson

from tidings.codec.structured import encode, encode_value, to_dict
from tidings.envelope import Event

__all__ = [
    "ATTRIBUTES",
    "STRUCTURED_CONTENT_TYPE",
    "binary_header",
    "event_to_kafka",
    "from_binary",
    "from_kafka",
    "to_kafka",
]

Headers = list[tuple[str, bytes]]
HeaderMap = dict[str, bytes]
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
_STRUCTURED: Headers = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
_RESERVED = frozenset({"data", "data_base64", "datacontenttype"})


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True  # CloudEvents: no datacontenttype means JSON data
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def to_kafka(value: bytes, fmt: str = "binary") -> tuple[bytes | None, Headers]:
    """The Kafka (value, headers) of one encoded event in ``fmt`` (binary|structured)."""
    if fmt != "binary":
        return value, _STRUCTURED
    fast = _binary_fast(value)
    if fast is not None:
        return fast
    kafka_value, headers = _binary(value)
    if headers is not _STRUCTURED and from_kafka(kafka_value, headers) != value:
        return value, _STRUCTURED  # binary mode would not give these bytes back
    return kafka_value, list(headers)


def event_to_kafka(
    event: Event, max_bytes: int, fmt: str = "binary"
) -> tuple[bytes | None, Headers | HeaderMap]:
    """What ``to_kafka(encode(event, max_bytes), fmt)`` gives, with the same errors;
    the headers maybe as a dict (in order), which ``Producer.produce`` takes too.

    The usual event (string attributes, JSON data) goes to binary mode straight from
    its attributes, without writing the structured document and parsing it back; any
    other takes that way.
    """
    if fmt == "binary":
        try:
            fast = _event_binary(event, max_bytes)
        except (TypeError, ValueError):  # refused: encode says why, in its own words
            fast = None
        if fast is not None:
            return fast
    return to_kafka(encode(event, max_bytes), fmt)


def binary_header(attribute: str, prefix: str = "ce_") -> str:
    """The header that carries ``attribute`` in binary mode: ``content-type`` for
    ``datacontenttype``, else ``<prefix><attribute>`` (``ce_`` on Kafka, ``ce-`` on NATS)."""
    return "content-type" if attribute == "datacontenttype" else prefix + attribute


ATTRIBUTES = (
    "specversion", "id", "source", "type", "time", "subject", "dataschema",
    "correlationid", "causationid", "traceparent", "partitionkey", "dataversion",
)  # fmt: skip
"""The CloudEvents attributes of tidings' events besides ``datacontenttype`` and the
data: in binary mode, each is the header :func:`binary_header` names."""
_HEADER = {name: binary_header(name) for name in (*ATTRIBUTES, "datacontenttype")}
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")  # read back lower-cased, as CloudEvents names are
_JSON = "application/json"


def _event_binary(event: Event, max_bytes: int) -> tuple[bytes | None, HeaderMap] | None:
    # The headers in to_dict's order, as from_kafka reads them back into encode's
    # bytes: strings as they are, the time as encode writes it, dataversion as its
    # digits; None where that would not hold, or when the event may be over the limit.
    # A dict rather than a list of pairs: a dict of strings and bytes is not tracked by
    # the garbage collector, ten tuples per event are (and made it run often).
    doc = to_dict(event)  # checks the attributes, as encode does
    data = doc.pop("data", None)
    content_type = doc.get("datacontenttype")
    if "data_base64" in doc or (content_type not in (_JSON, None) and not _is_json(content_type)):
        return None
    value = None if data is None else encode_value(data)
    headers: HeaderMap = {}
    text = 0
    for name, attr in doc.items():
        header = _HEADER.get(name)
        if header is None:
            if _EXTENSION_NAME.fullmatch(name) is None:
                return None
            header = "ce_" + name
        if type(attr) is str:
            raw = attr.encode()
        elif name == "time":
            raw = encode_value(attr)[1:-1]
        elif name == "dataversion" and type(attr) is int:
            raw = str(attr).encode()
        else:
            return None
        headers[header] = raw
        text += len(name) + len(raw)
    # An upper bound of encode's length (a byte is at most 6 once escaped in JSON),
    # exact only on the general path, which is taken near the limit.
    if (2 if value is None else len(value) + 10) + 6 * (text + len(headers)) > max_bytes:
        return None
    return value, headers


_DATA = b',"data":'


def _binary_fast(value: bytes) -> tuple[bytes, Headers] | None:
    """Binary mode for the usual event, as tidings encodes it: string attributes (and a
    numeric dataversion) spelled as orjson spells them, then JSON data, last. The data's
    bytes are sliced out, not parsed and written again; the attributes are checked to
    read back byte for byte. None: take the general path."""
    at = value.find(_DATA)  # inside a JSON string a quote is escaped: this is the key
    if at < 0 or not value.endswith(b"}"):
        return None
    head = value[:at] + b"}"
    try:
        attrs = orjson.loads(head)
        data = value[at + len(_DATA) : -1]
        orjson.loads(data)  # one JSON value, so "data" was the last member
    except orjson.JSONDecodeError:
        return None
    if type(attrs) is not dict or type(attrs.get("specversion")) is not str:
        return None
    if not _is_json(attrs.get("datacontenttype", None)) or "data_base64" in attrs:
        return None
    headers: Headers = []
    for name, attr in attrs.items():
        if name not in _HEADER and _EXTENSION_NAME.fullmatch(name) is None:
            return None  # read back lower-cased: the general path decides
        if type(attr) is str:
            key = "content-type" if name == "datacontenttype" else "ce_" + name
            headers.append((key, attr.encode()))
        elif name == "dataversion" and type(attr) is int and attr >= 0:
            headers.append(("ce_dataversion", str(attr).encode()))
        else:
            return None
    if orjson.dumps(attrs) != head:
        return None  # spelled otherwise (spacing, escapes): the general path decides
    return data, headers


def _binary(value: bytes) -> tuple[bytes | None, Headers]:
    # Binary mode's value and headers; (value, _STRUCTURED) where it cannot carry it.
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("specversion"), str):
        return value, _STRUCTURED  # not an event: stored as given
    content_type = doc.get("datacontenttype")
    if content_type is not None and not isinstance(content_type, str):
        return value, _STRUCTURED
    headers: Headers = []
    for name, attr in doc.items():
        if name == "datacontenttype":
            headers.append(("content-type", attr.encode()))  # in place: order is kept
            continue
        if name in _RESERVED:
            continue
        if isinstance(attr, str):
            headers.append(("ce_" + name, attr.encode()))
        elif name == "dataversion" and type(attr) is int:
            headers.append(("ce_dataversion", str(attr).encode()))  # decode reads it back
        else:
            return value, _STRUCTURED  # a typed extension: binary mode would lose it
    if "data_base64" in doc:
        b64 = doc["data_base64"]
        # Bytes declared (or defaulted) as JSON would read back as JSON data.
        if _is_json(content_type) or not isinstance(b64, str):
            return value, _STRUCTURED
        try:
            return base64.b64decode(b64, validate=True), headers
        except ValueError:
            return value, _STRUCTURED
    if "data" in doc:
        if not _is_json(content_type):
            return value, _STRUCTURED  # e.g. a JSON string declared text/plain
        return orjson.dumps(doc["data"]), headers
    return None, headers


def _bad(reason: str, value: bytes | None, headers: Sequence[tuple[str, Any]]) -> bytes:
    # No specversion: decode refuses it with a DecodeError; the rest is for a human.
    return orjson.dumps(
        {
            "kafka_binary_mode_error": reason,
            "headers": [[k, base64.b64encode(_raw(v)).decode()] for k, v in headers],
            "value_base64": None if value is None else base64.b64encode(value).decode(),
        }
    )


def _canonical_int(text: str) -> bool:
    return text.isascii() and text.isdecimal() and (text == "0" or not text.startswith("0"))


def _raw(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value or b"")


_MEMBER = {  # a header -> the start of its member in the document
    header: b'"' + name.encode() + b'":"'
    for name, header in _HEADER.items()
    if name != "dataversion"
}
_ESCAPED = re.compile(rb'[\x00-\x1f"\\]')  # what orjson escapes in a string; the rest is as is


def from_kafka(value: bytes | None, headers: Sequence[tuple[str, Any]] | None) -> bytes:
    """The structured-mode JSON bytes of a Kafka record written in either mode."""
    if not headers:
        return value if value is not None else b""
    fast = _structured_fast(value, headers)
    if fast is not None:
        return fast
    return from_binary(value, headers, "ce_")


def from_binary(
    value: bytes | None, headers: Sequence[tuple[str, Any]] | None, prefix: str
) -> bytes:
    """The structured-mode JSON bytes of a message whose attributes may be in headers
    named ``<prefix><attribute>`` (binary mode: ``ce_`` on Kafka, ``ce-`` on NATS),
    with ``content-type`` for ``datacontenttype``; without such headers, the value."""
    marker = prefix + "specversion"
    if not headers or not any(k.lower() == marker for k, _ in headers):
        return value if value is not None else b""
    return _structured(value, headers, prefix)


def _structured_fast(value: bytes | None, headers: Sequence[tuple[str, Any]]) -> bytes | None:
    # The usual binary record, as tidings writes it: attribute headers and string
    # extensions (``ce_`` and a lower-case name, e.g. ``ce_personaldata``), each once,
    # values that need no escaping in JSON, JSON data. The document is put together
    # from the bytes as they are, as orjson writes it (tests/test_codec_binary.py
    # compares the two); None: the general path decides.
    parts: list[bytes] = [b"{"]
    texts: list[bytes] = []
    content_type: bytes | None = None
    for name, raw in headers:
        member = _MEMBER.get(name)
        if type(raw) is not bytes:
            return None
        if member is not None:
            parts += (member, raw, b'",')
            texts.append(raw)
            if name == "content-type":
                content_type = raw
        elif name == "ce_dataversion":
            if not raw.isdigit() or raw[:1] == b"0":
                return None
            parts += (b'"dataversion":', raw, b",")
        elif (
            name[:3] == "ce_"
            and (attr := name[3:]) not in _RESERVED
            and _EXTENSION_NAME.fullmatch(attr)
        ):
            # A string extension (e.g. personaldata), as the general path writes it.
            parts += (b'"' + attr.encode() + b'":"', raw, b'",')
            texts.append(raw)
        else:
            return None
    names = dict(headers)  # built in C: a header given twice is one key
    if len(names) != len(headers) or "ce_specversion" not in names:
        return None
    joined = b"".join(texts)
    if _ESCAPED.search(joined) is not None:
        return None
    try:
        joined.decode()
    except UnicodeDecodeError:
        return None
    if value is None:
        parts[-1] = parts[-1][:-1]  # no data: no comma after the last attribute
        parts.append(b"}")
        return b"".join(parts)
    if content_type not in (None, b"application/json") and not _is_json(content_type.decode()):
        return None
    parts += (b'"data":', value, b"}")
    return b"".join(parts)


def _structured(
    value: bytes | None, headers: Sequence[tuple[str, Any]], prefix: str = "ce_"
) -> bytes:
    doc: dict[str, Any] = {}
    content_type: str | None = None
    for name, raw in headers:
        key = name.lower()
        if key != "content-type" and not key.startswith(prefix):
            continue
        try:
            text = raw if isinstance(raw, str) else bytes(raw or b"").decode("utf-8")
        except UnicodeDecodeError:
            return _bad(f"header {name!r} is not UTF-8", value, headers)
        if key == "content-type":
            if content_type is not None:
                return _bad("header 'content-type' is repeated", value, headers)
            doc["datacontenttype"] = content_type = text
            continue
        attr = key[len(prefix) :]
        if not attr or attr in _RESERVED or attr in doc:
            return _bad(f"header {name!r} is repeated, empty or reserved", value, headers)
        # tidings writes dataversion as a JSON number; decode reads either form.
        doc[attr] = int(text) if attr == "dataversion" and _canonical_int(text) else text
    if value is not None:
        if _is_json(content_type):
            # Spliced unparsed: invalid JSON data makes the whole document invalid,
            # which decode reports, rather than a second parse on every record.
            doc["data"] = orjson.Fragment(value)
        else:
            doc["data_base64"] = base64.b64encode(value).decode("ascii")
    return orjson.dumps(doc)
