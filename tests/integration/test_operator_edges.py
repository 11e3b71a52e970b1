"""Operator edges of the real CLI: no secret printed, SIGHUP stops cleanly, a taken port."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from tests.support.daemon import Daemon, jobwire, wait_until, write_config

pytestmark = pytest.mark.timeout(180)

SECRETS = {
    "db": "PgPassw0rd-db-7f3a",
    "amqp": "AmqpPassw0rd-91c2",
    "token": "AdminToken-0123456789abcdef",
    "stomp": "StompPassw0rd-5e1d",
    "kafka": "KafkaPassw0rd-44b0",
    "mqtt_url": "MqttUrlPassw0rd-0a9e",
    "mqtt": "MqttPassw0rd-c3d8",
}


def secret_config(database_url: str, broker_port: int = 1) -> dict[str, Any]:
    """A valid config with a secret in every place one can go; brokers at a closed port."""
    db = database_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRETS['db']}@")
    assert SECRETS["db"] in db, f"the test server's URL is not postgresql://postgres@: {db}"
    route = {"handler": "noop"}
    return {
        "database": {"url": db},
        "http": {"listen": "127.0.0.1:0", "admin_token": SECRETS["token"]},
        "logging": {"format": "json"},
        "sources": [
            {
                "name": "a",
                "type": "amqp",
                "url": f"amqp://jw:{SECRETS['amqp']}@127.0.0.1:{broker_port}/",
                "queue": "q",
                "route": route,
                "required": True,
            },
            {
                "name": "s",
                "type": "stomp",
                "port": broker_port,
                "password": SECRETS["stomp"],
                "destination": "/queue/q",
                "route": route,
            },
            {
                "name": "k",
                "type": "kafka",
                "bootstrap_servers": f"127.0.0.1:{broker_port}",
                "topics": ["t"],
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "jw",
                "sasl_password": SECRETS["kafka"],
                "route": route,
            },
            {
                "name": "m",
                "type": "mqtt",
                "url": f"mqtt://jw:{SECRETS['mqtt_url']}@127.0.0.1:{broker_port}",
                "password": SECRETS["mqtt"],
                "topics": ["t"],
                "route": route,
            },
        ],
    }


def assert_no_secret(text: str) -> None:
    leaked = [name for name, value in SECRETS.items() if value in text]
    assert leaked == [], f"secrets {leaked} printed in:\n{text}"


def test_check_config_never_prints_a_secret(tmp_path: Path) -> None:
    data = secret_config("postgresql://postgres@127.0.0.1:5432/x")
    valid = write_config(tmp_path / "valid.yaml", data)
    proc = jobwire("check-config", "-c", str(valid))
    assert proc.stdout.strip() == "ok"
    assert_no_secret(proc.stdout + proc.stderr)

    # Loaded, then refused: a route names a handler that is not allowed.
    data["sources"][0]["route"] = {"handler": "nosuch"}
    unrouted = write_config(tmp_path / "unrouted.yaml", data)
    proc = jobwire("check-config", "-c", str(unrouted), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "sources[0].route.handler: 'nosuch' is not in handlers" in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr)

    # Invalid in several places, two of them right in a secret field and two in URLs.
    sources = data["sources"]
    sources[0]["url"] = f"http://jw:{SECRETS['amqp']}@rabbit/"  # not amqp://
    sources[1]["password"] = 12345678  # not a string: the value must not be echoed
    sources[3]["url"] = f"tcp://jw:{SECRETS['mqtt_url']}@mq:1883"  # not mqtt://
    data["database"]["url"] = f"mysql://root:{SECRETS['db']}@db/x"
    data["database"]["schema"] = SECRETS["db"]  # a validator quotes this one verbatim
    data["http"]["admin_token"] = "short-" + SECRETS["token"][:6]  # too short
    data["workers"] = {"concurrency": "many"}
    invalid = write_config(tmp_path / "invalid.yaml", data)
    proc = jobwire("check-config", "-c", str(invalid), check=False)
    assert proc.returncode == 2, proc.stderr
    out = proc.stdout + proc.stderr
    assert_no_secret(out)
    assert "12345678" not in out and "short-" + SECRETS["token"][:6] not in out
    assert "Traceback" not in out
    lines = proc.stderr.splitlines()
    expected = {
        "sources[0].url": "must be an amqp:// or amqps:// URL (got 'http://jw:***@rabbit/')",
        "sources[1].password": "Input should be a valid string (got ***)",
        "sources[3].url": "must be an mqtt:// or mqtts:// URL (got 'tcp://jw:***@mq:1883')",
        "database.url": "must be 'embedded' or a postgresql:// URL (got 'mysql://root:***@db/x')",
        "database.schema": "'***' must be a plain SQL identifier",
        "http.admin_token": "String should have at least 16 characters (got ***)",
        "workers.concurrency": "Input should be a valid integer",
    }
    for key, reason in expected.items():
        prefix = f"error: {invalid}: {key}: {reason}"
        assert any(line.startswith(prefix) for line in lines), f"{prefix!r} not in:\n{out}"


def _get(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=10
        ) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as err:  # /readyz answers 503: the brokers are down
        return str(err.read().decode())


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop_quietly()


def test_running_daemon_prints_no_secret(
    database_url: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = write_config(tmp_path / "jobwire.yaml", secret_config(database_url))
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    daemon.wait_ready()
    for name in ("a", "s", "m"):
        daemon.wait_event("source_state", source=name, state="down")
    port = next(e["port"] for e in daemon.events() if e.get("event") == "http_listening")
    base = f"http://127.0.0.1:{port}"
    outputs = [
        _get(f"{base}/readyz"),
        _get(f"{base}/api/v1/sources", SECRETS["token"]),
        _get(f"{base}/metrics"),
    ]
    url = ["--database-url", database_url]
    wait_until(
        lambda: "a=down" in jobwire("stats", *url).stdout, what="stats showing source a down"
    )
    outputs += [jobwire("stats", *url).stdout, jobwire("stats", "--json", *url).stdout]
    assert daemon.terminate() == 0
    outputs.append(daemon.log())
    for text in outputs:
        assert_no_secret(text)


def _fetchval(url: str, sql: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_sighup_stops_gracefully_like_sigterm(
    database_url: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    url = ["--database-url", database_url]
    job_id = int(jobwire("enqueue", "sleep", "--payload", '{"seconds": 60}', *url).stdout)
    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms", "shutdown_timeout": "2s"},
            "logging": {"format": "json"},
        },
    )
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    wait_until(
        lambda: (
            _fetchval(database_url, "SELECT status FROM jobwire.jobs WHERE id=$1", job_id)
            == "running"
        ),
        what="the job running",
    )
    assert json.loads(jobwire("stats", "--json", *url).stdout)["instances"]
    daemon.proc.send_signal(signal.SIGHUP)
    assert daemon.wait(timeout=30) == 0, daemon.log()
    assert any(
        e.get("event") == "stop_requested" and e.get("reason") == "SIGHUP" for e in daemon.events()
    )
    status = _fetchval(database_url, "SELECT status FROM jobwire.jobs WHERE id=$1", job_id)
    assert status in {"pending", "succeeded"}
    assert _fetchval(database_url, "SELECT count(*) FROM jobwire.workers") == 0
    assert json.loads(jobwire("stats", "--json", *url).stdout)["instances"] == []


def test_taken_http_port_is_one_line_and_exit_2(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = tmp_path / "jobwire.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "database": {"url": database_url},
                    "http": {"listen": address},
                    "logging": {"format": "json"},
                }
            )
        )
        proc = jobwire("run", "-c", str(config), check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    naming = [line for line in proc.stderr.splitlines() if "http.listen" in line]
    assert naming == [f"jobwire: http.listen {address}: address already in use"], proc.stderr
    assert proc.stderr.splitlines()[-1] == naming[0]
