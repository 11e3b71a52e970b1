"""The source registry: one list of types for validation and construction, no broker library
until an adapter is built, and the AMQP fast path installed by building an AMQP source."""

from __future__ import annotations

import subprocess
import sys
import typing

import aiormq.connection
import pytest

from jobwire.adapters import build_adapter
from jobwire.adapters.amqp import AmqpSource
from jobwire.adapters.amqp import frames as amqp_frames
from jobwire.adapters.registry import SOURCE_TYPES, SOURCES
from jobwire.adapters.stomp import StompSource
from jobwire.config import Config, ConfigError, RouteConfig, parse_config

BROKER_LIBRARIES = ("aio_pika", "aiormq", "pamqp", "aiokafka", "aiomqtt", "paho", "stomp")
ROUTE = RouteConfig(handler="h")


def test_the_config_validates_sources_against_the_registry_s_models() -> None:
    assert SOURCE_TYPES == ("amqp", "stomp", "kafka", "mqtt", "http")
    annotation = Config.model_fields["sources"].annotation
    (item,) = typing.get_args(annotation)
    union, *_ = typing.get_args(item)
    assert set(typing.get_args(union)) == {entry.model for entry in SOURCES.values()}


def test_an_unknown_type_is_named_with_the_registered_ones() -> None:
    text = "sources:\n  - {name: a, type: sqs, route: {handler: h}}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "jobwire.yaml", env={})
    (problem,) = caught.value.problems
    assert problem.key == "sources[0].type"
    assert "'sqs'" in problem.reason and ", ".join(SOURCE_TYPES) in problem.reason


@pytest.mark.parametrize(
    "module",
    [
        "jobwire.config",
        "jobwire.adapters",
        "jobwire.adapters.registry",
        *(f"jobwire.adapters.{kind}" for kind in ("amqp", "stomp", "kafka", "mqtt", "http")),
        *(f"jobwire.adapters.{kind}.config" for kind in ("amqp", "stomp", "kafka", "mqtt", "http")),
    ],
)
def test_config_side_imports_load_no_broker_library(module: str) -> None:
    """In a fresh interpreter, whichever of them is imported first (the import cycle between
    jobwire.config and the packages' config modules resolves either way)."""
    code = (
        f"import sys, {module}\n"
        "from jobwire.config import Config\n"
        "Config.model_validate({'sources': [{'name': 'a', 'type': 'mqtt', 'topics': ['t'],"
        " 'route': {'handler': 'h'}}]})\n"
        f"print(sorted(m for m in {BROKER_LIBRARIES!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_building_an_amqp_source_installs_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Start from aiormq's own; monkeypatch puts whatever was there back afterwards.
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", aiormq.connection.FrameReceiver)
    monkeypatch.setattr(aiormq.connection, "Channel", aiormq.connection.Channel)
    monkeypatch.setattr(amqp_frames, "_chosen", None)
    monkeypatch.delenv("JOBWIRE_AMQP_FRAME_READER", raising=False)
    if amqp_frames.fast_path_reader() == "jobwire":
        monkeypatch.setattr(aiormq.connection, "FrameReceiver", object)
    adapter = build_adapter(AmqpSource(name="a", type="amqp", queue="q", route=ROUTE))
    assert aiormq.connection.FrameReceiver is amqp_frames.BufferedFrameReceiver
    assert adapter.describe()["frame_reader"] == "jobwire"
    assert amqp_frames.install_fast_path() is True  # idempotent


def test_the_environment_keeps_aiormq_s_reader_and_stats_say_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", object)
    monkeypatch.setattr(aiormq.connection, "Channel", aiormq.connection.Channel)
    monkeypatch.setattr(amqp_frames, "_chosen", None)
    monkeypatch.setenv("JOBWIRE_AMQP_FRAME_READER", "aiormq")
    adapter = build_adapter(AmqpSource(name="a", type="amqp", queue="q", route=ROUTE))
    assert aiormq.connection.FrameReceiver is object
    assert adapter.describe()["frame_reader"] == "aiormq"


def test_a_stomp_source_reports_its_frame_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBWIRE_STOMP_FRAME_READER", raising=False)
    source = StompSource(name="s", type="stomp", destination="/queue/q", route=ROUTE)
    assert build_adapter(source).describe()["frame_reader"] == "asyncio"
    monkeypatch.setenv("JOBWIRE_STOMP_FRAME_READER", "nul-safe")
    assert build_adapter(source).describe()["frame_reader"] == "nul-safe"
    monkeypatch.setenv("JOBWIRE_STOMP_FRAME_READER", "stomp.py")
    assert build_adapter(source).describe()["frame_reader"] == "stomp.py"


def test_a_source_of_no_registered_type_is_refused() -> None:
    with pytest.raises(ValueError, match="no adapter for source type"):
        build_adapter(RouteConfig(handler="h"))  # type: ignore[arg-type]
