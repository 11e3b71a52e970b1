"""MQTT 5 string properties read as the broker sent them, so that one cannot stop a source.

paho decodes a PUBLISH's string properties (content type, response topic, user properties)
inside its network loop, and refuses U+FEFF, which MQTT 5 says a receiver must keep
([MQTT-1.5.4-3]), as well as U+0000, surrogates and bytes that are not UTF-8. Its refusal
is a protocol error: the connection is dropped, the broker sends the same message first on
the next one, and the source loops on it for good while later messages wait (and, past the
broker's queue limit, are dropped). Mosquitto forwards U+FEFF.

``install`` replaces paho's ``readUTF`` with one that keeps the same framing checks and
spells the value with ``storable.octets_text``: UTF-8 text as it is, other bytes as
``base64:`` text, as every source spells broker bytes. Nothing is refused for its
characters; what the store cannot hold is replaced with a note when the job is written.
Proven on paho-mqtt 2.2.0; a paho without ``readUTF`` keeps its own reader (and its
refusals), and a warning says so.
"""

from __future__ import annotations

import structlog
from paho.mqtt import properties as paho_properties
from paho.mqtt.exception import MalformedPacket

from jobwire.storable import octets_text

log = structlog.get_logger("jobwire.mqtt")
# paho's own reader, as imported (before any install): the way back, and for tests.
PAHO_READ_UTF = getattr(paho_properties, "readUTF", None)


def read_utf(buffer: bytes, maxlen: int) -> tuple[str, int]:
    """An MQTT UTF-8 string at the start of ``buffer``: its text and the bytes it took."""
    if maxlen < 2:
        raise MalformedPacket("Not enough data to read string length")
    length = int.from_bytes(buffer[:2], "big")
    if length > maxlen - 2:
        raise MalformedPacket("Length delimited string too long")
    return octets_text(bytes(buffer[2 : 2 + length])), length + 2


def install() -> None:
    """Read string properties with ``read_utf`` from now on (idempotent)."""
    if not callable(getattr(paho_properties, "readUTF", None)):
        log.warning("mqtt_lenient_reader_unavailable", note="paho's own string reader is used")
        return
    paho_properties.readUTF = read_utf
