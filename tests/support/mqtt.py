"""MQTT helpers for the tests: publish at QoS 1, clear a session, run a private Mosquitto."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.daemon import Daemon
from tests.support.processes import ServiceProcess, free_port

REPO = Path(__file__).resolve().parents[2]


async def publish(
    port: int,
    topic: str,
    bodies: list[bytes],
    user_properties: dict[str, str] | None = None,
    qos: int = 1,
) -> int:
    """Publish at QoS 1 (MQTT 5); returns how many the broker acknowledged."""
    properties = None
    if user_properties:
        properties = Properties(PacketTypes.PUBLISH)
        for key, value in user_properties.items():
            properties.UserProperty = (key, value)
    acked = 0
    async with aiomqtt.Client(
        "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=200
    ) as client:
        for start in range(0, len(bodies), 200):
            chunk = bodies[start : start + 200]
            await asyncio.gather(
                *(client.publish(topic, body, qos=qos, properties=properties) for body in chunk)
            )
            acked += len(chunk)
    return acked


async def clear_session(port: int, client_id: str) -> None:
    """Connect with a clean start and no expiry: the broker forgets the session."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        properties=properties,
    ):
        pass


class Mosquitto(ServiceProcess):
    """A private Mosquitto on a free port, with the config jobwire ships in deploy/."""

    def __init__(self, workdir: Path) -> None:
        super().__init__("mosquitto", free_port(), workdir / "mosquitto.log")
        conf = (REPO / "deploy" / "mosquitto" / "jobwire.conf").read_text()
        self.conf_path = workdir / "mosquitto.conf"
        # Started as root, Mosquitto drops to the mosquitto user, which cannot write in the
        # test's own directory: it ran without its persistence file, and a restart lost the
        # sessions (found by a drill). As root it stays root.
        stay = "user root\n" if os.geteuid() == 0 else ""
        self.conf_path.write_text(
            f"{conf}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence_location {workdir}/\n{stay}"
        )

    def argv(self) -> list[str]:
        """mosquitto with our config file."""
        return [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(self.conf_path)]


def create_session(config: Path, log_path: Path) -> None:
    """Run the daemon until its source is subscribed, then stop it: the broker then keeps a
    session for it, and messages published before the next start wait there."""
    first = Daemon(config, log_path)
    try:
        first.wait_ready()
        # Subscribed (state up), not merely started: else the session has no subscription.
        first.wait_event("source_state", state="up")
        assert first.terminate() == 0
    finally:
        first.stop_quietly()
