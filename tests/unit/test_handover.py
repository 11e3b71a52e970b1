"""The config a supervisor hands its children (processes/handover.py): the validated config
comes back whole, from a file nothing can change or find by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobwire.config import parse_config
from jobwire.processes.handover import (
    CONFIG_FD_ENV,
    ConfigHandover,
    HandoverMissing,
    receive_config,
)

EXAMPLE = Path(__file__).parents[2] / "config" / "jobwire.example.yaml"


def test_the_example_config_comes_back_as_validated() -> None:
    """Every source type, outputs, schedules: the child's config equals the supervisor's."""
    config = parse_config(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE), env={})
    handover = ConfigHandover(config, str(EXAMPLE))
    try:
        received, file = receive_config({CONFIG_FD_ENV: str(os.dup(handover.fd))})
        # A second child reads it all again: reads never move a shared position.
        again, _ = receive_config({CONFIG_FD_ENV: str(os.dup(handover.fd))})
    finally:
        handover.close()
    assert (received, file) == (config, str(EXAMPLE))
    assert again == config


def test_a_child_cannot_change_what_the_next_one_reads() -> None:
    """Sealed: no write, no truncation; and no name in the file system to open it by."""
    config = parse_config("workers: {concurrency: 3}\n", "jobwire.yaml", env={})
    handover = ConfigHandover(config, "jobwire.yaml")
    try:
        with pytest.raises(PermissionError):
            os.pwrite(handover.fd, b"{}", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(handover.fd, 0)
        target = os.readlink(f"/proc/self/fd/{handover.fd}")
        assert target.startswith("/memfd:"), target
        received, _ = receive_config({CONFIG_FD_ENV: str(os.dup(handover.fd))})
    finally:
        handover.close()
    assert received.workers.concurrency == 3


def test_the_descriptor_is_closed_once_read() -> None:
    """A child keeps no descriptor of it open (nor passes it on to what it starts)."""
    handover = ConfigHandover(parse_config("", "jobwire.yaml", env={}), "jobwire.yaml")
    fd = os.dup(handover.fd)
    handover.close()
    environ = {CONFIG_FD_ENV: str(fd), "PATH": "/bin"}
    receive_config(environ)
    with pytest.raises(OSError):
        os.fstat(fd)
    # Nor its number: what the child starts would read another file by that number.
    assert environ == {"PATH": "/bin"}


@pytest.mark.parametrize("environ", [{}, {CONFIG_FD_ENV: "x"}, {CONFIG_FD_ENV: "999"}])
def test_a_child_without_a_config_says_so(environ: dict[str, str]) -> None:
    """No variable, not a number, not an open descriptor: HandoverMissing, never the file."""
    with pytest.raises(HandoverMissing):
        receive_config(environ)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"file": "x"}',
        b'{"file": "x", "secrets": [], "config": {"workers": {"concurrency": -1}}}',
        b'{"file": "x", "secrets": 5, "config": {}}',
    ],
)
def test_a_descriptor_holding_something_else_is_a_clear_refusal(
    content: bytes, tmp_path: Path
) -> None:
    """The variable naming a descriptor of anything but a supervisor's config: a traceback
    (JSONDecodeError, KeyError, a ValidationError quoting values) before."""
    path = tmp_path / "other"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(HandoverMissing, match="does not hold a supervisor's config"):
        receive_config({CONFIG_FD_ENV: str(fd)})
