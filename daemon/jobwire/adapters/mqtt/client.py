"""What every aiomqtt client of an MQTT source is given: broker, identity, session, TLS."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from jobwire.adapters.base import tls_context
from jobwire.adapters.mqtt.config import MqttOutput, MqttSource


def connection_options(cfg: MqttSource | MqttOutput, client_id: str) -> dict[str, Any]:
    """Broker address, credentials, identity, keepalive and TLS: what every client is given."""
    url = urlsplit(cfg.url)
    return {
        "hostname": url.hostname or "127.0.0.1",
        "port": url.port or (8883 if url.scheme == "mqtts" else 1883),
        "username": cfg.username or (unquote(url.username) if url.username else None),
        "password": cfg.password or (unquote(url.password) if url.password else None),
        "identifier": client_id,
        "keepalive": int(cfg.keepalive),
        "tls_context": tls_context(cfg.tls, cfg.url.startswith("mqtts://")),
        "timeout": 10,
    }


def client_options(cfg: MqttSource, client_id: str, persistent: bool) -> dict[str, Any]:
    """aiomqtt.Client keyword arguments; ``persistent``: a session the broker keeps for us."""
    options = connection_options(cfg, client_id)
    if cfg.protocol == "5":
        options["protocol"] = aiomqtt.ProtocolVersion.V5
        if persistent:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = int(cfg.session_expiry)
            properties.ReceiveMaximum = cfg.prefetch
            options["properties"] = properties
            # Never a clean start: the session holds what was published while we were away
            # (aiomqtt's default cleans it on the first connect).
            options["clean_start"] = False
        else:
            options["clean_start"] = True
    else:
        options["protocol"] = aiomqtt.ProtocolVersion.V311
        options["clean_session"] = not persistent
    return options
