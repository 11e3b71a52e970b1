"""Keep secrets out of everything jobwire prints: URL passwords and secret config fields.

Secret fields are marked in the config models with ``json_schema_extra=SECRET``; every
string that looks like a URL has its password masked. Values known to be secret are
remembered for the process (``remember``) so that log lines, CLI errors and published
state can replace them wherever they turn up, even quoted inside an exception message.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel
from pydantic.fields import FieldInfo

MASK = "***"
SECRET: dict[str, Any] = {"secret": True}
"""``json_schema_extra`` of a config field whose value must never be printed."""

# Names of keys that hold secrets, for raw YAML (no model yet) and for the models' check.
# Not "key" alone: key_file is a path, dedup_key a selector, routing_keys are not secret.
SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)|(^|_)pass$|secret|token|credential|api_?key|private_?key", re.I
)
# scheme://user:password@ ; the password runs to the last @ before the path (a password may
# hold an unencoded @), and never across whitespace.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*):[^\s/?#]*@")
# password=VALUE written as text: a libpq key=value DSN (host=db password=x), a URL's query
# (?password=x&...), a connection string (Password=x;). The name may carry a prefix
# (sslpassword, client_secret, access_token); a quoted DSN value may hold spaces.
_KV_PASSWORD = re.compile(
    r"(?P<head>\b(?:\w*(?:password|passwd|passphrase|secret|token|api_?key)|pass|pwd)"
    r"\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s&;,'\"]+)",
    re.I,
)
# Shorter secrets are masked in their own fields and URLs, but not replaced in free text:
# replacing "ab" everywhere would garble every message and reveal which letters it had.
MIN_REPLACED = 4

_known: set[str] = set()
_replaceable: tuple[str, ...] = ()  # _known's long-enough values, longest first


def is_secret_name(name: str) -> bool:
    """Whether a config key's name says it holds a secret (password, token, ...)."""
    return bool(SECRET_NAME.search(name))


def is_secret_field(field: FieldInfo) -> bool:
    """Whether a model field is marked secret (``json_schema_extra=SECRET``)."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("secret") is True


def mask_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", url)


def mask_key_values(text: str) -> str:
    """``text`` with the value of each ``password=VALUE`` (DSN, URL query) replaced."""
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)


def url_passwords(text: str) -> set[str]:
    """Passwords of URLs (``user:password@``, ``?password=``) and of ``password=`` in a
    key=value DSN in ``text``, as written and percent-decoded."""
    found: set[str] = set()
    for match in _URL_PASSWORD.finditer(text):
        try:
            password = urlsplit(match.group(0) + "x").password
        except ValueError:
            password = None
        if password:
            found.update({password, unquote(password)})
    for match in _KV_PASSWORD.finditer(text):
        value = match["value"]
        if value.startswith("'"):  # a quoted DSN value: as written, and as libpq reads it
            found.add(value)
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found.update({value, unquote(value)})
    return found


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords and every given (and remembered) secret masked."""
    if "://" in text:
        text = mask_url(text)
    if "=" in text:
        text = mask_key_values(text)
    candidates = _replaceable
    if secrets:
        # Longest first: a secret that contains another is masked whole.
        extra = {s for s in secrets if len(s) >= MIN_REPLACED}
        candidates = tuple(sorted(extra.union(_replaceable), key=len, reverse=True))
    for secret in candidates:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_data(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of a JSON-like value with every string in it redacted."""
    secrets = frozenset(secrets)
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {k: redact_data(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v, secrets) for v in value]
    return value


def remember(secrets: Iterable[str]) -> None:
    """Add secrets for this process: log lines and CLI errors mask them from now on."""
    global _replaceable  # one process, one config: a module-level set is enough
    _known.update(s for s in secrets if s)
    _replaceable = tuple(
        sorted((s for s in _known if len(s) >= MIN_REPLACED), key=len, reverse=True)
    )


def known() -> frozenset[str]:
    """The secrets remembered so far."""
    return frozenset(_known)


def _secret_scalar(value: Any) -> set[str]:
    if value is None or isinstance(value, bool) or value == "":
        return set()
    if isinstance(value, str | int | float):
        return {str(value)}
    return set()


def secret_values(model: BaseModel) -> set[str]:
    """Every secret of a loaded config: marked fields (at any depth) and URL passwords."""
    found: set[str] = set()

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, BaseModel):
            for name, field in type(value).model_fields.items():
                walk(getattr(value, name, None), secret or is_secret_field(field))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, secret or is_secret_name(str(key)))
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item, secret)
        else:
            if secret:
                found.update(_secret_scalar(value))
            if isinstance(value, str):
                found.update(url_passwords(value))

    walk(model, False)
    return found


def raw_secret_values(node: Any, secret_keys: frozenset[str] = frozenset()) -> set[str]:
    """Secrets in a parsed but unvalidated YAML tree: values under secret-named keys (or
    ``secret_keys``) and URL passwords; for a config that failed validation."""
    found: set[str] = set()

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, secret or str(key) in secret_keys or is_secret_name(str(key)))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, secret)
        else:
            if secret:
                found.update(_secret_scalar(value))
            if isinstance(value, str):
                found.update(url_passwords(value))

    walk(node, False)
    return found


def model_classes(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model reachable through its fields (lists, dicts, unions)."""
    seen: list[type[BaseModel]] = []

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in seen:
                return
            seen.append(annotation)
            for field in annotation.model_fields.values():
                visit(field.annotation)
            return
        origin = typing.get_origin(annotation)
        if origin is not None or isinstance(annotation, types.UnionType):
            for arg in typing.get_args(annotation):
                visit(arg)

    visit(root)
    return seen


def secret_field_names(root: type[BaseModel]) -> frozenset[str]:
    """Names (and aliases) of every field marked secret in ``root``'s models."""
    names: set[str] = set()
    for cls in model_classes(root):
        for name, field in cls.model_fields.items():
            if is_secret_field(field):
                names.add(name)
                if field.alias:
                    names.add(field.alias)
    return frozenset(names)
