"""The docs and the README: the nav points at pages that exist, the README's links resolve,
the README stays short, and the configuration page names every key of the config schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobwire.config import json_schema

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


class _Loader(yaml.SafeLoader):
    """mkdocs.yml carries python tags (the mermaid fence); read them as plain strings."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: suffix)


def _nav_pages(entries: Any) -> list[str]:
    pages: list[str] = []
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            if isinstance(value, list):
                pages.extend(_nav_pages(value))
            elif isinstance(value, str) and not re.match(r"[a-z]+://", value):
                pages.append(value)
    return pages


def test_every_nav_entry_is_a_page() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)
    pages = _nav_pages(config["nav"])
    assert "index.md" in pages and "getting-started/tutorial.md" in pages
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml nav names pages that do not exist: {missing}"
    orphans = sorted(
        str(path.relative_to(DOCS))
        for path in DOCS.rglob("*.md")
        if str(path.relative_to(DOCS)) not in pages
    )
    assert not orphans, f"pages missing from the nav: {orphans}"


def test_every_relative_link_in_the_readme_resolves() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link for link in links if not re.match(r"[a-z]+:|#", link)]
    assert relative, "the README links into the docs"
    broken = [link for link in relative if not (ROOT / link.split("#")[0]).exists()]
    assert not broken, f"README links to missing files: {broken}"


def test_the_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size < 10_000, f"README.md is {size} bytes; move the detail into docs/"


def _keys(schema: dict[str, Any]) -> dict[str, set[str]]:
    """Every top-level key, and every key of each definition (sources, route, ...)."""
    keys = {"(top level)": set(schema["properties"])}
    for name, definition in schema.get("$defs", {}).items():
        keys[name] = set(definition.get("properties", {}))
    return keys


@pytest.mark.parametrize("definition", sorted(_keys(json_schema())))
def test_the_configuration_page_names_every_schema_key(definition: str) -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([a-z0-9_]+)`", page))
    missing = sorted(_keys(json_schema())[definition] - named)
    assert not missing, (
        f"docs/configuration.md does not mention {definition} keys {missing}: "
        "add them (the schema's descriptions say what they mean)"
    )
