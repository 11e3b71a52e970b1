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

from jobwire.adapters.amqp.config import AmqpOutput, AmqpSource
from jobwire.adapters.http.config import HttpSource
from jobwire.adapters.kafka.config import KafkaOutput, KafkaSource
from jobwire.adapters.mqtt.config import MqttOutput, MqttSource
from jobwire.adapters.stomp.config import StompOutput, StompSource

if TYPE_CHECKING:
    from jobwire.config import OutputBase, SourceBase
    from jobwire.effects import OutputPublisher


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
    "http": SourceType(HttpSource, "jobwire.adapters.http.adapter:build"),
}

SOURCE_TYPES: tuple[str, ...] = tuple(SOURCES)
"""The ``type:`` values a source may have, in the order messages list them."""


def source_union() -> Any:
    """The annotation of one ``sources:`` entry: every model, told apart by ``type``."""
    models = tuple(entry.model for entry in SOURCES.values())
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007


@dataclass(frozen=True)
class OutputType:
    """One output type: its model and the dotted path of what builds its publisher."""

    model: type[OutputBase]
    # "module:function" taking (name, output config) and returning an OutputPublisher.
    factory: str


OUTPUTS: dict[str, OutputType] = {
    "amqp": OutputType(AmqpOutput, "jobwire.adapters.amqp.output:build"),
    "stomp": OutputType(StompOutput, "jobwire.adapters.stomp.output:build"),
    "kafka": OutputType(KafkaOutput, "jobwire.adapters.kafka.output:build"),
    "mqtt": OutputType(MqttOutput, "jobwire.adapters.mqtt.output:build"),
}

OUTPUT_TYPES: tuple[str, ...] = tuple(OUTPUTS)
"""The ``type:`` values an output may have."""


def output_union() -> Any:
    """The annotation of one ``outputs:`` entry: every model, told apart by ``type``."""
    models = tuple(entry.model for entry in OUTPUTS.values())
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007


def resolve(path: str) -> Any:
    """The object a ``module:name`` path names, importing its module."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_publisher(name: str, output: OutputBase) -> OutputPublisher:
    """The publisher of one configured output; its broker library is imported only here."""
    kind = getattr(output, "type", None)
    entry = OUTPUTS.get(kind) if isinstance(kind, str) else None
    if entry is None or not isinstance(output, entry.model):
        raise ValueError(f"no publisher for output type {kind!r}")
    publisher: OutputPublisher = resolve(entry.factory)(name, output)
    return publisher
