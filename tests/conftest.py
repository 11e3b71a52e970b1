"""Shared fixtures: a migrated template database, and a fresh clone of it per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import structlog

from jobwire.store.postgres import PostgresStore, migrate
from tests.support.activemq import ActiveMQBroker
from tests.support.activemq import available as activemq_available
from tests.support.kafka import TansuBroker, create_topic
from tests.support.mqtt import Mosquitto

# The server the integration tests use; any database on it is fine, we create our own.
ADMIN_URL = os.environ.get("JOBWIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def db_url(name: str) -> str:
    """URL of database ``name`` on the test server."""
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """Each test starts with structlog's defaults: a test that ran configure_logging (a CLI
    quiet level, cached loggers) must not hide log lines from a later test's capture_logs."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A database migrated once per session; tests clone it (CREATE DATABASE ... TEMPLATE)."""
    name = f"jwtpl_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL}: {exc}")
    asyncio.run(migrate(db_url(name), "jobwire"))
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"jwtest_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    yield db_url(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_store(database_url: str) -> AsyncIterator[PostgresStore]:
    """A PostgresStore on the test's own database."""
    store = await PostgresStore.connect(database_url, "jobwire", min_size=1, max_size=8)
    yield store
    await store.close()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """A tansu broker (Kafka protocol, memory storage) for the session, on a free port."""
    try:
        broker = TansuBroker(tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    except (OSError, RuntimeError, ImportError) as exc:
        pytest.skip(f"no tansu broker: {exc}")
    yield broker
    broker.stop()


@pytest.fixture
async def kafka_topic(kafka_broker: TansuBroker) -> str:
    """A fresh uuid-named topic with three partitions."""
    name = f"jw-test-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka_broker.bootstrap, name, partitions=3)
    return name


@pytest.fixture(scope="session")
def activemq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ActiveMQBroker]:
    """A private ActiveMQ (Debian's jars) with a STOMP connector on a free port."""
    missing = activemq_available()
    if missing is not None:
        pytest.skip(missing)
    broker = ActiveMQBroker(tmp_path_factory.mktemp("activemq")).start(timeout=60)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private Mosquitto on a free port, configured as deploy/mosquitto/jobwire.conf says
    (the machine's own at 1883 keeps Mosquitto's defaults, which drop queued messages)."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()
