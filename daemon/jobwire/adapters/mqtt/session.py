"""Whether the broker kept an MQTT source's session, and who took it when it did not.

The source asks for a persistent session so that QoS 1 messages published while it is away
are queued for it. Two things undo that silently at the broker: the session expiring (or a
broker that cannot keep it over a restart) and another client connecting with the same
client id. CONNACK's session-present flag tells the first; MQTT 5's DISCONNECT reason 0x8e
(session taken over) tells the second. Without them an operator saw a source "up" that had
lost messages, or one flapping between two instances with nothing naming the cause.
"""

from __future__ import annotations

from typing import Any

import aiomqtt

TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another connection took this client id


class SessionWatch:
    """Reads CONNACK's session-present flag and logs when the broker kept no session."""

    def __init__(self, log: Any, client_id: str) -> None:
        self._log = log
        self.client_id = client_id
        self.lost = 0  # reconnections that found no session (for describe())
        self._present: bool | None = None
        self._connected_before = False

    def attach(self, client: aiomqtt.Client) -> None:
        """Note the flag in paho's on_connect, then call aiomqtt's own handler."""
        paho_client = client._client
        original: Any = paho_client.on_connect  # aiomqtt's, set when it built the client

        def on_connect(*args: Any, **kwargs: Any) -> None:
            flags = args[2] if len(args) > 2 else kwargs.get("flags")
            self._present = bool(getattr(flags, "session_present", False))
            original(*args, **kwargs)

        paho_client.on_connect = on_connect

    def connected(self) -> None:
        """After CONNACK: a new session on a reconnection means messages may be lost."""
        if not self._present:
            if self._connected_before:
                self.lost += 1
                self._log.warning(
                    "mqtt_session_lost",
                    client_id=self.client_id,
                    why=(
                        "the broker kept no session for this client id: QoS 1 messages "
                        "published while the source was away were not queued for it (the "
                        "session expired, the broker lost it, or another client connected "
                        "with this id and a clean start)"
                    ),
                )
            else:
                self._log.info("mqtt_session_new", client_id=self.client_id)
        self._connected_before = True
        self._present = None

    def taken_over(self, exc: BaseException) -> ConnectionError | None:
        """A clear error when the broker ended the connection because another client
        connected with this id; ``None`` for any other end."""
        cause: BaseException | None = exc
        while cause is not None:
            rc = getattr(cause, "rc", None)
            if getattr(rc, "value", rc) == TAKEN_OVER:
                return ConnectionError(
                    f"another client connected with this source's client id "
                    f"{self.client_id!r} and took its session (MQTT 5 reason 0x8e); two "
                    f"instances must not share a client_id"
                )
            cause = cause.__cause__
        return None
