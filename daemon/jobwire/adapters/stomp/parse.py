"""STOMP frame parsing: stomp.py's ``parse_frame``, with a quick way for the usual frame.

stomp.py unescapes every header name and value with a regular-expression substitution,
which makes its ``parse_frame`` the largest single cost of taking a MESSAGE in a drain. A
frame whose headers hold no backslash (nothing to unescape) and no CR (every line ends in
a bare LF) is read here with plain string splits into the same ``Frame``; any other frame
goes to stomp.py's ``parse_frame`` as before, except one whose headers are not all UTF-8
or hold ``base64:`` (``_parse_octets``). tests/unit/test_stomp_parse.py holds the two to
the same result over frames of every other shape.
"""

from __future__ import annotations

from stomp.utils import LINE_END_RE, PREAMBLE_END_RE, Frame, parse_frame, parse_headers

from jobwire.storable import whole_text

_BLANK_LINE = b"\n\n"
_OCTETS = b"base64:"


def parse(raw: bytes) -> Frame | None:
    """The frame in ``raw`` (without its NUL), or None for nothing but EOLs."""
    end = raw.find(_BLANK_LINE)
    head = raw if end < 0 else raw[:end]
    if _OCTETS in head:
        return _parse_octets(raw)  # text that reads as bytes: spelled as its bytes
    if not head.isascii():
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return _parse_octets(raw)
    # Without a CR before the first blank line, that blank line is where stomp.py's
    # pattern (LF LF or CRLF CRLF) ends the headers too.
    if b"\\" in head or b"\r" in head:
        return parse_frame(raw)
    lines = head.decode("utf-8").split("\n")
    first = 0
    while first < len(lines) and not lines[first]:
        first += 1  # heart-beat EOLs before the command
    if first >= len(lines):
        return None
    headers: dict[str, str] = {}
    for line in lines[first + 1 :]:
        key, colon, value = line.partition(":")
        # A repeated header keeps its first value (STOMP 1.2); a line without a name or a
        # colon is no header, as stomp.py skips it.
        if key and colon and key not in headers:
            headers[key] = value
    return Frame(lines[first], headers, b"" if end < 0 else raw[end + 2 :])


def _parse_octets(raw: bytes) -> Frame | None:
    """``parse_frame`` for headers that are not all UTF-8 (or hold ``base64:``), which it
    would read with replacement characters, so that two different ids became one dedup
    key. Each name and value is kept whole (``storable.whole_text``)."""
    match = PREAMBLE_END_RE.search(raw)
    head_end, body_start = (match.start(), match.end()) if match else (len(raw), len(raw))
    lines = LINE_END_RE.split(raw[:head_end].decode("utf-8", "surrogateescape"))
    first = 0
    while first < len(lines) and not lines[first]:
        first += 1
    if first >= len(lines):
        return None
    headers = {
        whole_text(key): whole_text(value) for key, value in parse_headers(lines, first + 1).items()
    }
    return Frame(whole_text(lines[first]), headers, raw[body_start:])
