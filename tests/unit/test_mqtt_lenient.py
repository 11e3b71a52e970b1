"""MQTT 5 string properties read whole (adapters/mqtt/lenient.py)."""

from __future__ import annotations

import base64

import pytest
from paho.mqtt import properties as paho_properties
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from jobwire.adapters.mqtt import lenient


def framed(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


@pytest.mark.parametrize("text", ["plain", "", "a\ufeffb", "nul \x00 inside", "ünïcode ✓"])
def test_text_paho_would_refuse_or_keep_is_read_as_sent(text: str) -> None:
    raw = text.encode()
    assert lenient.read_utf(framed(raw) + b"tail", len(raw) + 2) == (text, len(raw) + 2)


def test_bytes_that_are_not_utf8_are_spelled_base64() -> None:
    raw = b"\xff\xfe-x"
    value, used = lenient.read_utf(framed(raw), 6)
    assert (value, used) == ("base64:" + base64.b64encode(raw).decode(), 6)


def test_a_length_past_the_properties_is_still_malformed() -> None:
    with pytest.raises(MalformedPacket):
        lenient.read_utf(framed(b"abcdef"), 5)
    with pytest.raises(MalformedPacket):
        lenient.read_utf(b"\x00", 1)


def test_installed_paho_decodes_a_publish_with_u_feff_in_its_properties() -> None:
    sent = Properties(PacketTypes.PUBLISH)
    sent.UserProperty = ("x", "a\ufeffb")
    sent.ContentType = "application/json\ufeff"
    packed = sent.pack()
    before = paho_properties.readUTF  # an in-process daemon may have installed it already
    try:
        paho_properties.readUTF = lenient.PAHO_READ_UTF
        with pytest.raises(MalformedPacket):
            Properties(PacketTypes.PUBLISH).unpack(packed)
        lenient.install()
        read = Properties(PacketTypes.PUBLISH)
        read.unpack(packed)
        assert read.UserProperty == [("x", "a\ufeffb")]
        assert read.ContentType == "application/json\ufeff"
    finally:
        paho_properties.readUTF = before
