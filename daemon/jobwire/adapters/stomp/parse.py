"""STOMP frame parsing: stomp.py's ``parse_frame``, with a quick way for the usual frame.

stomp.py unescapes every header name and value with a regular-expression substitution,
which makes its ``parse_frame`` the largest single cost of taking a MESSAGE in a drain. A
frame whose headers hold no backslash (nothing to unescape) and no CR (every line ends in
a bare LF) is read here with plain string splits into the same ``Frame``; any other frame
goes to stomp.py's ``parse_frame`` as before. tests/unit/test_stomp_parse.py holds the two
to the same result over frames of every shape.
"""

from __future__ import annotations

from stomp.utils import Frame, parse_frame

_BLANK_LINE = b"\n\n"


def parse(raw: bytes) -> Frame | None:
    """The frame in ``raw`` (without its NUL), or None for nothing but EOLs."""
    end = raw.find(_BLANK_LINE)
    head = raw if end < 0 else raw[:end]
    # Without a CR before the first blank line, that blank line is where stomp.py's
    # pattern (LF LF or CRLF CRLF) ends the headers too.
    if b"\\" in head or b"\r" in head:
        return parse_frame(raw)
    lines = head.decode("utf-8", errors="replace").split("\n")
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
