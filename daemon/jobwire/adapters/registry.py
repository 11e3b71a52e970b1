"""Every source type, once: its config model, and where its adapter is built from.

The config validates ``sources:`` against the models here (a union discriminated by
``type``) and names these types in its messages; ``build_adapter`` builds from the same
entries. Only the packages' ``config`` modules are imported here, never a broker library:
an adapter's module (and its broker library) is imported when a source of its type is
built, and a type's ``setup`` hook runs once before the first of them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from jobwire.adapters.amqp.config import AmqpSource
from jobwire.adapters.kafka.config import KafkaSource
from jobwire.adapters.mqtt.config import MqttSource
from jobwire.adapters.stomp.config import StompSource

if TYPE_CHECKING:
    from jobwire.config import SourceBase


@dataclass(frozen=True)
class SourceType:
    """One source type: its model and the dotted paths of what builds its adapter."""

    model: type[SourceBase]
    # "module:function" taking (source, offset_reader) and returning the Adapter.
    factory: str
    # "module:function" run once per process before the first adapter of this type is built.
    setup: str | None = None


SOURCES: dict[str, SourceType] = {
    "amqp": SourceType(
        AmqpSource,
        "jobwire.adapters.amqp.adapter:build",
        setup="jobwire.adapters.amqp.frames:install_fast_path",
    ),
    "stomp": SourceType(StompSource, "jobwire.adapters.stomp.adapter:build"),
    "kafka": SourceType(KafkaSource, "jobwire.adapters.kafka.adapter:build"),
    "mqtt": SourceType(MqttSource, "jobwire.adapters.mqtt.adapter:build"),
}

SOURCE_TYPES: tuple[str, ...] = tuple(SOURCES)
"""The ``type:`` values a source may have, in the order messages list them."""


def source_union() -> Any:
    """The annotation of one ``sources:`` entry: every model, told apart by ``type``."""
    models = tuple(entry.model for entry in SOURCES.values())
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007


def resolve(path: str) -> Any:
    """The object a ``module:name`` path names, importing its module."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
