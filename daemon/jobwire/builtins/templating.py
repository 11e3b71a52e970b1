"""The ``email`` built-in's templates: Jinja2, sandboxed, strict about missing variables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from jobwire.builtins.settings import EmailTemplate
from jobwire.exceptions import Reject

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PARTS = {"subject": "subject.txt", "text": "body.txt", "html": "body.html"}


@dataclass(frozen=True)
class Rendered:
    """One message's rendered subject and parts."""

    subject: str
    text: str | None
    html: str | None


class Templates:
    """Inline templates from the config, then files under ``templates_dir``.

    Sandboxed: a template (or a variable's value) cannot reach Python internals. Strict: a
    variable the payload lacks is an error, not an empty string in a customer's mail. Only
    the HTML part escapes variables.
    """

    def __init__(self, inline: Mapping[str, EmailTemplate], directory: Path | None) -> None:
        sources: dict[str, str] = {}
        for name, template in inline.items():
            for part, file in _PARTS.items():
                text = getattr(template, part)
                if text is not None:
                    sources[f"{name}/{file}"] = text
        loaders: list[jinja2.BaseLoader] = [jinja2.DictLoader(sources)]
        if directory is not None:
            loaders.append(jinja2.FileSystemLoader(directory))
        self._env = SandboxedEnvironment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        )

    def render(self, name: str, variables: Mapping[str, Any]) -> Rendered:
        """Render template ``name``; any problem fails the job (Reject) with the reason."""
        if not _NAME.match(name):
            raise Reject(f"template name {name!r} is not valid (letters, digits, _ . -)")
        subject = self._part(name, "subject", variables)
        if subject is None:
            raise Reject(
                f"no email template {name!r} (builtins.email.templates or "
                f"templates_dir/{name}/subject.txt)"
            )
        text = self._part(name, "text", variables)
        html = self._part(name, "html", variables)
        if text is None and html is None:
            raise Reject(f"email template {name!r} has neither a text nor an HTML body")
        # One line: a newline from a variable must not start a new header.
        return Rendered(" ".join(subject.split()), text, html)

    def _part(self, name: str, part: str, variables: Mapping[str, Any]) -> str | None:
        try:
            template = self._env.get_template(f"{name}/{_PARTS[part]}")
        except jinja2.TemplateNotFound:
            return None
        except jinja2.TemplateSyntaxError as exc:
            raise Reject(f"email template {name!r} {part}: syntax error: {exc}") from None
        try:
            return template.render(variables)
        except jinja2.UndefinedError as exc:
            raise Reject(f"email template {name!r} {part}: {exc}") from None
        except jinja2.TemplateError as exc:  # SecurityError among them
            raise Reject(f"email template {name!r} {part}: {type(exc).__name__}: {exc}") from None
