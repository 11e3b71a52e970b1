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
from typing import TYPE_CHECKING, Annotated, Any, Protocol, Union, runtime_checkable

from pydantic import Field

from jobwire.adapters.amqp.config import AmqpOutput, AmqpSource
from jobwire.adapters.http.config import HttpSource
from jobwire.adapters.kafka.config import KafkaOutput, KafkaSource
from jobwire.adapters.mqtt.config import MqttOutput, MqttSource
from jobwire.adapters.stomp.config import StompOutput, StompSource
from jobwire.reply import is_reply_output, reply_output_name

if TYPE_CHECKING:
    from jobwire.config import Config, OutputBase, SourceBase
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

# The publishers of the implicit ``reply:<source>`` outputs (jobwire.reply), by source type:
# each sends a row to the address its key names.
REPLY_PUBLISHERS: dict[str, str] = {
    "amqp": "jobwire.adapters.amqp.reply:build",
    "mqtt": "jobwire.adapters.mqtt.reply:build",
}


def output_union() -> Any:
    """The annotation of one ``outputs:`` entry: every model, told apart by ``type``."""
    models = tuple(entry.model for entry in OUTPUTS.values())
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007


def resolve(path: str) -> Any:
    """The object a ``module:name`` path names, importing its module."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@runtime_checkable
class ReplyingSource(Protocol):
    """A source type that can reply (AMQP, MQTT): ``reply`` and its implicit output."""

    name: str
    reply: bool

    def reply_output(self) -> OutputBase:
        """The output its replies go through, on its own connection settings."""
        ...


def reply_outputs(config: Config) -> dict[str, OutputBase]:
    """The implicit output of every source with ``reply: true``, by name (``reply:<source>``;
    no configured output may have such a name)."""
    return {
        reply_output_name(s.name): s.reply_output()
        for s in config.sources
        if isinstance(s, ReplyingSource) and s.reply
    }


def build_publisher(name: str, output: OutputBase) -> OutputPublisher:
    """The publisher of one output (a source's ``reply:`` output gets its type's reply
    publisher); its broker library is imported only here."""
    kind = getattr(output, "type", None)
    entry = OUTPUTS.get(kind) if isinstance(kind, str) else None
    if entry is None or not isinstance(output, entry.model):
        raise ValueError(f"no publisher for output type {kind!r}")
    factory = REPLY_PUBLISHERS.get(str(kind)) if is_reply_output(name) else entry.factory
    if factory is None:
        raise ValueError(f"output type {kind!r} cannot reply")
    publisher: OutputPublisher = resolve(factory)(name, output)
    return publisher
