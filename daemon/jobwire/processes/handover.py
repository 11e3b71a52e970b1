"""The config a supervisor hands its children: the one it validated at the service's start.

A child started again later (after a crash, a hang) must run what its siblings run, not
the file as it is now: an edit takes effect on a restart of the whole service. The config
goes to each child as an inherited descriptor of an anonymous, sealed memory file, so it
is never written where anyone but this service could read it, nor changed by a child.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import MutableMapping

from jobwire.config import Config
from jobwire.redaction import known, remember

CONFIG_FD_ENV = "JOBWIRE_CONFIG_FD"


class HandoverMissing(Exception):
    """This child was given no config by its supervisor (or cannot read it)."""


class ConfigHandover:
    """The validated config (with the file it came from and the secrets read for it) in a
    file only descriptors reach; ``fd`` is passed to every child."""

    def __init__(self, config: Config, file: str) -> None:
        payload = {
            "file": file,
            "config": config.model_dump(mode="json", by_alias=True, round_trip=True),
            # Values read from ${VAR}_FILE or credentials: masked in the child's logs too.
            "secrets": sorted(known()),
        }
        self.fd = _sealed_file(json.dumps(payload).encode())

    def env(self) -> dict[str, str]:
        """The environment variable that tells a child where its config is."""
        return {CONFIG_FD_ENV: str(self.fd)}

    def close(self) -> None:
        """Close the supervisor's descriptor (children hold their own)."""
        os.close(self.fd)


def receive_config(environ: MutableMapping[str, str] = os.environ) -> tuple[Config, str]:
    """The config and file name the supervisor handed this child; its descriptor is closed,
    and its variable taken out of ``environ`` (what the child starts must not read a
    descriptor number that names nothing, or another file, by then)."""
    try:
        fd = int(environ.pop(CONFIG_FD_ENV))
    except (KeyError, ValueError):
        raise HandoverMissing(f"no config from the supervisor (${CONFIG_FD_ENV})") from None
    try:
        data = _read_all(fd)
    except OSError as exc:
        raise HandoverMissing(f"cannot read the supervisor's config: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        payload = json.loads(data)
        remember(list(payload["secrets"]))
        return Config.model_validate(payload["config"]), str(payload["file"])
    except (ValueError, TypeError, KeyError) as exc:
        # Not what a supervisor writes (the variable names another descriptor): said as
        # such, without quoting what was read (it may hold a config's secrets).
        raise HandoverMissing(
            f"descriptor {fd} does not hold a supervisor's config ({type(exc).__name__})"
        ) from None


def _sealed_file(data: bytes) -> int:
    """A descriptor of an unnamed file holding ``data``, sealed against any change where
    the system allows (Linux memfd); elsewhere an unlinked private temporary file."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        fd, path = tempfile.mkstemp(prefix="jobwire-config-")  # mode 0600
        os.unlink(path)
    else:
        fd = memfd_create("jobwire-config", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if memfd_create is not None:
            seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_all(fd: int) -> bytes:
    """The whole file, read at explicit offsets: children share the descriptor's position."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
