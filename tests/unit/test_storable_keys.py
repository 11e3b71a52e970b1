"""Keys and broker bytes as text: the same input gives the same text (a redelivery finds its
row), and different inputs never give the same text (no message is taken for another)."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from jobwire.storable import MAX_KEY_BYTES, octets_text, storable_key, whole_text

# Characters that escaping, hashing and the base64: spelling care about.
_tricky = st.lists(
    st.sampled_from(
        ["a", "\\", "x", "0", "\x00", "\ud800", "\udcff", ".", "é", "base64:", "...sha256:"]
    ),
    max_size=8,
).map("".join)
_keys = st.one_of(_tricky, _tricky.map(lambda t: "k" * (MAX_KEY_BYTES - 2) + t))


@settings(max_examples=500)
@given(_keys, _keys)
def test_two_keys_share_a_stored_key_only_if_they_are_the_same(a: str, b: str) -> None:
    assert (storable_key(a) == storable_key(b)) == (a == b)
    assert storable_key(a) == storable_key(a)


def test_the_keys_the_drill_found_sharing_one() -> None:
    pairs = [
        ("id\x00", "id\\x00"),  # a NUL's escape, and the same characters typed
        ("a" * 1000 + "\x00", "a" * 1000 + "\\x00"),  # the same, past the hashing length
    ]
    for a, b in pairs:
        assert storable_key(a) != storable_key(b)
    hashed = storable_key("id\x00")
    assert hashed is not None and storable_key(hashed) != hashed  # typed as the hashed form


def test_a_plain_key_is_stored_as_it_is() -> None:
    assert storable_key("orders:m-1") == "orders:m-1"


@settings(max_examples=500)
@given(st.binary(max_size=12) | st.sampled_from([b"base64:", b"base64:/w==", b"\xff"]))
def test_broker_bytes_are_text_one_for_one(raw: bytes) -> None:
    text = octets_text(raw)
    back = base64.b64decode(text[7:]) if text.startswith("base64:") else text.encode()
    assert back == raw
    assert whole_text(raw.decode("utf-8", "surrogateescape")) == text


@given(st.binary(max_size=12), st.binary(max_size=12))
def test_different_bytes_are_different_text(a: bytes, b: bytes) -> None:
    assert (octets_text(a) == octets_text(b)) == (a == b)


def test_text_that_spells_bytes_is_spelled_as_its_own_bytes() -> None:
    assert octets_text(b"\xff") == "base64:/w=="
    assert octets_text(b"base64:/w==") != "base64:/w=="
    assert octets_text(b"plain") == "plain"
