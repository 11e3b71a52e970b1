"""``${VAR}`` in a config: the environment, ``$VAR_FILE`` and systemd credentials, ``$$``,
null for an unquoted value that expands to nothing, and escaping inside a URL's userinfo."""

from __future__ import annotations

import os
import re
import select
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

# $$ (a literal $), ${VAR} or ${VAR:-default}.
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_URL_HEAD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# A secret file past this is not a secret (``/dev/zero`` would fill the memory).
SECRET_MAX_BYTES = 1024 * 1024
# How long a pipe (process substitution, a FIFO) may take to give its secret.
SECRET_PIPE_WAIT = 5.0


class _Plain(str):
    """An unquoted YAML scalar holding ``${``: when it expands to nothing it is null."""

    __slots__ = ()


class Loader(yaml.SafeLoader):
    """``yaml.safe_load``, except that it marks unquoted scalars holding ``${`` (``_Plain``)."""


def _construct_str(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    # The quoting is gone once the tree is built: keep it where interpolation needs it.
    return _Plain(value) if node.style is None and "${" in value else value


Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


@dataclass
class _Lookup:
    """Where ``${VAR}`` values come from, and what reading them found."""

    env: Mapping[str, str]
    problems: list[tuple[str, str]]
    # Values read from files: secrets by convention, whatever key they end up under.
    secrets: set[str]
    # Key -> the variables whose environment values it holds: masked in error messages.
    origins: dict[str, list[str]]
    # id of a list or dict already interpolated -> its copy and key: an alias is expanded once.
    done: dict[int, tuple[Any, str]]

    def get(self, name: str, path: str) -> str | None:
        """``$VAR``, else the file ``$VAR_FILE`` names, else ``$CREDENTIALS_DIRECTORY/VAR``."""
        if name in self.env:
            self.origins.setdefault(path, []).append(name)
            return self.env[name]
        pointer = self.env.get(f"{name}_FILE")
        if pointer:
            where = f"environment variable {name}_FILE names {pointer}"
            return self._read(Path(pointer), where, path)
        # systemd's LoadCredential= puts each credential in a file named after it.
        directory = self.env.get("CREDENTIALS_DIRECTORY")
        if directory and (Path(directory) / name).exists():
            where = f"credential {name} ({Path(directory) / name})"
            return self._read(Path(directory) / name, where, path)
        return None

    def _read(self, file: Path, where: str, path: str) -> str:
        try:
            value = read_secret(file).decode("utf-8").rstrip("\r\n")
        except OSError as exc:
            self.problems.append((path, f"{where}, which cannot be read: {exc.strerror}"))
            return ""
        except UnicodeDecodeError:
            # Its message would quote bytes of the secret.
            self.problems.append((path, f"{where}, which is not UTF-8 text"))
            return ""
        self.secrets.add(value)
        return value


def read_secret(file: Path) -> bytes:
    """A secret file's bytes: SECRET_MAX_BYTES at most, and a pipe (``<(...)``, a FIFO)
    given SECRET_PIPE_WAIT seconds to finish; OSError (with a strerror) otherwise.

    A FIFO with no writer made start-up wait for good, and a device such as ``/dev/zero``
    was read until the memory ran out."""
    # O_NONBLOCK: opening a FIFO no one writes to would wait for a writer forever.
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise OSError(0, "it is a directory")
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + SECRET_PIPE_WAIT
        while size <= SECRET_MAX_BYTES:
            if not stat.S_ISREG(mode):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise OSError(0, f"nothing came through it within {SECRET_PIPE_WAIT:g}s")
            try:
                chunk = os.read(fd, SECRET_MAX_BYTES + 1 - size)
            except BlockingIOError:
                continue  # a pipe that select() called readable, then had nothing after all
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise OSError(0, f"larger than {SECRET_MAX_BYTES // 1024} KiB: not a secret")
    finally:
        os.close(fd)


def _userinfo(text: str) -> tuple[int, int] | None:
    """Start and end of the ``user:password`` part of a URL-looking scalar, if it has one."""
    head = _URL_HEAD.match(text)
    if head is None:
        return None
    # A reference (its default, say) may hold / or @: blank them out, keeping positions.
    opaque = _VAR.sub(lambda m: "_" * len(m.group(0)), text)
    end = len(opaque)
    for stop in "/?#":
        found = opaque.find(stop, head.end())
        if found != -1:
            end = min(end, found)
    at = opaque.rfind("@", head.end(), end)
    return (head.end(), at) if at != -1 else None


def _expand(text: str, lookup: _Lookup, path: str) -> str | None:
    userinfo = _userinfo(text)

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = lookup.get(name, path)
        if value is None:
            if default is not None:
                return default  # written in the file: as it should appear, escaped or not
            lookup.problems.append(
                (path, f"environment variable {name} is not set and has no default")
            )
            return ""
        if userinfo and userinfo[0] <= match.start() and match.end() <= userinfo[1]:
            # A password with @, /, : or % would otherwise end or garble the URL's userinfo.
            escaped = quote(value, safe="")
            if value in lookup.secrets:
                lookup.secrets.add(escaped)
            return escaped
        return value

    result = str(_VAR.sub(replace, text))
    # As an empty unquoted YAML value is: ``key: ${X:-}`` is null, ``key: "${X:-}"`` is "".
    if isinstance(text, _Plain) and result == "":
        return None
    return result


def interpolate(
    node: Any,
    env: Mapping[str, str],
    path: str,
    problems: list[tuple[str, str]],
    secrets: set[str] | None = None,
    origins: dict[str, list[str]] | None = None,
) -> Any:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``$$`` in every string of a parsed YAML
    tree; values read from ``_FILE`` files or credentials are added to ``secrets``, and
    ``origins`` gets the key of each environment variable's value."""
    lookup = _Lookup(
        env,
        problems,
        set() if secrets is None else secrets,
        {} if origins is None else origins,
        {},
    )
    return _interpolate(node, lookup, path)


def _interpolate(node: Any, lookup: _Lookup, path: str) -> Any:
    if isinstance(node, dict | list):
        # Aliases share one parsed node: copying each use of it would let a few hundred
        # bytes of nested aliases ("billion laughs") cost minutes and gigabytes. A shared
        # node's problems are reported once, at its first key.
        if id(node) in lookup.done:
            made, first = lookup.done[id(node)]
            _carry_origins(lookup.origins, first, path)
            return made
        copy: Any
        if isinstance(node, dict):
            copy = {
                str(k) if isinstance(k, _Plain) else k: _interpolate(v, lookup, _join(path, str(k)))
                for k, v in node.items()
            }
        else:
            copy = [_interpolate(v, lookup, f"{path}[{i}]") for i, v in enumerate(node)]
        lookup.done[id(node)] = (copy, path)
        return copy
    if not isinstance(node, str):
        return node
    return _expand(node, lookup, path)


def _carry_origins(origins: dict[str, list[str]], first: str, path: str) -> None:
    """Note under ``path`` the environment variables found under ``first``, the key where
    the same shared node (a YAML alias) was read: its values, wrong at this key too, must
    be named there, not quoted. The loader bounds the expansion, so this copying too."""
    if first == path:
        return
    found = [
        (key, names)
        for key, names in origins.items()
        if key == first or key.startswith((f"{first}.", f"{first}["))
    ]
    for key, names in found:
        origins.setdefault(path + key[len(first) :], []).extend(names)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
