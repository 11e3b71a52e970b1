"""Reading a config file's YAML strictly and within bounds: a regular UTF-8 file, no
duplicate keys, no nesting or alias expansion beyond reason, and errors that quote no text."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from jobwire.interpolation import Loader

# Far beyond any real config, far below what costs time or memory: a "billion laughs" file
# of a few hundred bytes expands through nested aliases to millions of values.
MAX_VALUES = 100_000
# The composer recurses per level: Python's stack gives out near 1000.
MAX_DEPTH = 100
MAX_BYTES = 4 * 1024 * 1024

_MERGE = "tag:yaml.org,2002:merge"
_COERCED = {
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:null": "null",
}
# A quoted token in one of PyYAML's messages ('!tag', 'alias', a character).
_QUOTED = re.compile(r"""\s?('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_ONE_CHAR = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)|.?", re.I)


class FileProblem(Exception):
    """The file cannot be read as a config: ``where`` (line, column) may be empty."""

    def __init__(self, problem: str, where: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.where = where


class _OwnError(yaml.MarkedYAMLError):
    """An error of ours: its message quotes nothing that could be a secret."""


@dataclass(frozen=True)
class CoercedKey:
    """A plain mapping key YAML read as something other than a string (``no``, ``0755``)."""

    value: Any
    text: str
    kind: str
    line: int


def read_config_text(path: Path) -> str:
    """The text of a config file: a regular file of UTF-8 text, ``MAX_BYTES`` at most."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise FileProblem(f"cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileProblem("cannot read: not a regular file (a directory, device or pipe)")
        try:
            data = handle.read(MAX_BYTES + 1)
        except OSError as exc:
            raise FileProblem(f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise FileProblem(f"larger than {MAX_BYTES // (1024 * 1024)} MiB: not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The message would quote the bytes, which may belong to a secret.
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FileProblem(
            "not UTF-8 text (save it as UTF-8)", f"line {line}, byte {column}"
        ) from None


class StrictLoader(Loader):
    """The config's loader: refuses duplicate keys, deep nesting and alias bombs, and notes
    the mapping keys YAML 1.1 read as booleans, numbers or null."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.coerced_keys: list[CoercedKey] = []
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        """A node, no deeper than ``MAX_DEPTH`` (the composer recurses per level)."""
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _OwnError(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Node | None:
        """The document's node graph, once its expansion through aliases is known to be sane."""
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping, refused if a key is repeated (YAML would keep the last silently)."""
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue  # keys merged in by <<: are meant to be overridden
                key = self.construct_object(key_node, deep=False)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: the base class says so
                if first is not None:
                    raise _OwnError(
                        problem=f"duplicate key {key!r} (first on line {first}): "
                        "YAML would keep only the last",
                        problem_mark=key_node.start_mark,
                    )
                seen[key] = line
                kind = _COERCED.get(key_node.tag)
                if kind and key_node.style is None:
                    self.coerced_keys.append(CoercedKey(key, key_node.value, kind, line))
        return super().construct_mapping(node, deep=deep)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Refuse a graph whose aliases expand it beyond ``MAX_VALUES`` values or ``MAX_DEPTH``
    levels, or refer to a node from inside it; each shared node is measured once."""
    measured: dict[int, tuple[int, int]] = {}  # id -> (values, depth) once expanded
    open_: set[int] = set()  # started, not finished: the current node's ancestors
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            parts = [measured[id(child)] for child in _children(node)]
            values = 1 + sum(v for v, _ in parts)
            depth = 1 + max((d for _, d in parts), default=0)
            if values > MAX_VALUES:
                problem = f"expands to more than {MAX_VALUES} values through its aliases (*name)"
                raise _OwnError(problem=problem, problem_mark=node.start_mark)
            if depth > MAX_DEPTH:
                problem = f"nested deeper than {MAX_DEPTH} levels through its aliases (*name)"
                raise _OwnError(problem=problem, problem_mark=node.start_mark)
            measured[id(node)] = (values, depth)
            open_.discard(id(node))
            continue
        if id(node) in measured:
            continue
        if id(node) in open_:
            problem = "an alias (*name) refers to a node that contains it"
            raise _OwnError(problem=problem, problem_mark=node.start_mark)
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))


@dataclass
class Parsed:
    """A config's YAML as plain data, and the keys YAML did not read as strings."""

    data: Any
    coerced_keys: list[CoercedKey] = field(default_factory=list)


def load_yaml(text: str) -> Parsed:
    """Parse config text; raise FileProblem with the line and the kind of problem."""
    loader = StrictLoader(text)
    try:
        return Parsed(loader.get_single_data(), loader.coerced_keys)
    except yaml.YAMLError as exc:
        raise _describe(exc, text) from None
    finally:
        loader.dispose()


def _describe(exc: yaml.YAMLError, text: str) -> FileProblem:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        problem = f"invalid YAML: unacceptable character #x{exc.character:04x}: {exc.reason}"
        return FileProblem(problem, f"line {line}, column {column}")
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or "not valid YAML"
    if not isinstance(exc, _OwnError):
        problem = _unquoted(problem)
    return FileProblem(f"invalid YAML: {problem}", where)


def _unquoted(problem: str) -> str:
    """PyYAML's message without the text it quotes: an unquoted ``*password`` or
    ``!password`` becomes an alias or a tag, and the message would print it."""
    quoted = False

    def drop(match: re.Match[str]) -> str:
        nonlocal quoted
        inner = match.group(1)[1:-1]
        # Token kinds (<scalar>) and single characters (a tab) say what is wrong; keep them.
        if (inner.startswith("<") and inner.endswith(">")) or _ONE_CHAR.fullmatch(inner):
            return match.group(0)
        quoted = True
        return ""

    problem = _QUOTED.sub(drop, problem)
    if quoted and ("alias" in problem or "tag" in problem):
        problem += " (a value starting with * or ! must be quoted)"
    return problem
