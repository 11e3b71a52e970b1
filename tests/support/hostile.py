"""Hostile input for the intake (issue 18): the messages, independent publishers, the tally.

Every message is published with a client of its own protocol, not with jobwire's
``publish``, so the bytes on the wire are what a foreign producer sends: pika (AMQP),
stomp.py (STOMP), kafka-python (Kafka), paho-mqtt (MQTT). Each publisher blocks until the
broker confirmed every message and returns, per message, the dedup key the daemon's source
derives from it (without the ``<source>:`` prefix).

The tally (``assess``) maps each job row back to the message it came from: by dedup key,
else by its raw body, else by its JSON; then says what is missing, doubled or wrong.
"""

from __future__ import annotations

import json
import struct
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import paho.mqtt.client as paho
import pika
import stomp
from kafka import KafkaProducer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# Above the 200,000 bytes of the deeply nested body (so that one reaches the JSON decoder
# instead of being stopped by the size check), below the oversized body.
MAX_BODY_BYTES = 204_800
GOOD = 100  # good messages before the hostile ones, and as many after
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class Outgoing:
    """One message as a publisher sends it.

    ``ident`` goes where the protocol carries a message id (AMQP ``message_id``, STOMP
    ``amqp-message-id``, an MQTT 5 user property ``msg-id``; Kafka's dedup key is the
    offset instead). ``headers`` values are text, or bytes where the protocol carries bytes.
    """

    body: bytes
    ident: str
    headers: tuple[tuple[str, str | bytes], ...] = ()
    content_type: str = "application/json"
    kafka_key: bytes | None = None


@dataclass(frozen=True)
class Hostile:
    """A hostile case: a name and the message that carries it.

    ``may_succeed``: only the metadata is odd (a header, the message id, a Kafka key) while
    the body is a valid job; a daemon that stores such a message safely and runs it is as
    right as one that fails it with a reason. Either way it is one job row, raw body kept.
    """

    name: str
    message: Outgoing
    may_succeed: bool = False

    @property
    def allowed(self) -> frozenset[str]:
        """Final statuses that keep the promise."""
        return frozenset({"failed", "succeeded"}) if self.may_succeed else frozenset({"failed"})


def good(n: int) -> Outgoing:
    """Good message n: an echo job that says which one it is."""
    return Outgoing(json.dumps({"type": "echo", "n": n}).encode(), f"good-{n}")


def goods_around(cases: Sequence[Hostile]) -> list[Outgoing]:
    """GOOD good messages, the hostile ones, GOOD more good ones."""
    return [
        *(good(n) for n in range(GOOD)),
        *(c.message for c in cases),
        *(good(n) for n in range(GOOD, 2 * GOOD)),
    ]


def _marked(name: str, **extra: Any) -> bytes:
    """A valid echo job naming its case: the oddity is elsewhere (headers, id, key, size)."""
    return json.dumps({"type": "echo", "case": name, **extra}).encode()


def _case(name: str, body: bytes | None = None, **message: Any) -> Hostile:
    may_succeed = message.pop("may_succeed", False)
    msg = Outgoing(body if body is not None else _marked(name), f"bad-{name}", **message)
    return Hostile(name, msg, may_succeed)


# The body is the problem: each of these must end as a failed job holding that body.
DEEP_JSON = _case("deep-json", b"[" * 100_000 + b"]" * 100_000)
PRIORITY_HUGE = _case(
    "priority-huge", b'{"type": "echo", "case": "priority-huge", "priority": 99999999999}'
)
# Not JSON by RFC 8259, but Python's json module reads it (as float inf).
PRIORITY_INFINITY = _case(
    "priority-infinity", b'{"type": "echo", "case": "priority-infinity", "priority": Infinity}'
)
BODY_NOT_UTF8 = _case("body-not-utf8", b"\xff\xfe\x00garbage")
# Valid JSON text that PostgreSQL's jsonb refuses: \u0000, and a lone surrogate.
JSON_NUL_ESCAPE = _case(
    "json-nul-escape", b'{"type": "echo", "case": "json-nul-escape", "a": "\\u0000"}'
)
JSON_LONE_SURROGATE = _case(
    "json-lone-surrogate", b'{"type": "echo", "case": "json-lone-surrogate", "a": "\\ud800"}'
)
HANDLER_NOT_ALLOWED = _case(
    "handler-not-allowed",
    json.dumps({"type": "os:system", "case": "handler-not-allowed", "cmd": "true"}).encode(),
)
BODY_TOO_LARGE = _case("body-too-large", _marked("body-too-large", pad="x" * MAX_BODY_BYTES))

BODY_CASES = (
    DEEP_JSON,
    PRIORITY_HUGE,
    PRIORITY_INFINITY,
    BODY_NOT_UTF8,
    JSON_NUL_ESCAPE,
    JSON_LONE_SURROGATE,
    HANDLER_NOT_ALLOWED,
    BODY_TOO_LARGE,
)

# The metadata is the problem (the body is a valid echo job): see Hostile.may_succeed.
HEADER_VALUE_NUL = _case("header-value-nul", headers=(("x-hostile", "a\x00b"),), may_succeed=True)
HEADER_NAME_NUL = _case("header-name-nul", headers=(("x-host\x00ile", "v"),), may_succeed=True)
# Bytes that are no UTF-8: the CESU-8 form of the lone surrogate U+D800, then \xff\xfe.
HEADER_VALUE_NOT_UTF8 = _case(
    "header-value-not-utf8", headers=(("x-hostile", b"\xed\xa0\x80\xff\xfe"),), may_succeed=True
)
# The id field is the source's default dedup key (AMQP message_id, STOMP amqp-message-id).
MESSAGE_ID_NUL = Hostile(
    "message-id-nul",
    Outgoing(_marked("message-id-nul"), "bad-message-id\x00nul"),
    may_succeed=True,
)
# What Java's LongSerializer writes for 42: eight bytes, seven of them NUL.
KAFKA_BINARY_KEY = _case("kafka-binary-key", kafka_key=struct.pack(">q", 42), may_succeed=True)


# --- publishers (blocking; the tests run them in a thread) ---------------------------------


def publish_amqp(queue: str, messages: Sequence[Outgoing]) -> list[str | None]:
    """pika, publisher confirms, default exchange; a nack or a return raises."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for msg in messages:
            properties = pika.BasicProperties(
                message_id=msg.ident,
                content_type=msg.content_type,
                delivery_mode=pika.DeliveryMode.Persistent,
                # bytes go as an AMQP byte array ('x'), text as a long string ('S').
                headers=dict(msg.headers) or None,
            )
            channel.basic_publish("", queue, msg.body, properties, mandatory=True)
    finally:
        connection.close()
    return [m.ident for m in messages]


def declare_amqp_queue(queue: str) -> None:
    """A durable RabbitMQ queue (delete it with ``delete_amqp_queue``)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        connection.channel().queue_declare(queue, durable=True)
    finally:
        connection.close()


def amqp_queue_depth(queue: str) -> int:
    """Ready messages left in a RabbitMQ queue (0 once every delivery was acked)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()


def delete_amqp_queue(queue: str) -> None:
    """Remove a test queue (a STOMP /queue/ destination is one too)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()


class _Receipts(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.errors: list[str] = []
        self.changed = threading.Condition()

    def on_receipt(self, frame: Any) -> None:
        with self.changed:
            self.ids.add(frame.headers.get("receipt-id", ""))
            self.changed.notify_all()

    def on_error(self, frame: Any) -> None:
        with self.changed:
            self.errors.append(f"{frame.headers} {frame.body!r}")
            self.changed.notify_all()


def publish_stomp(
    destination: str, messages: Sequence[Outgoing], port: int = 61613
) -> list[str | None]:
    """stomp.py 1.2, a receipt per SEND (RabbitMQ sends it once the message is confirmed)."""
    conn = stomp.Connection12([("127.0.0.1", port)], vhost="/", auto_decode=False)
    receipts = _Receipts()
    conn.set_listener("receipts", receipts)
    conn.connect("guest", "guest", wait=True)
    try:
        for index, msg in enumerate(messages):
            headers: dict[str, str] = {
                "persistent": "true",
                "amqp-message-id": msg.ident,
                "receipt": f"r-{index}",
            }
            for name, value in msg.headers:
                assert isinstance(value, str), "a STOMP header is text (stomp.py encodes it)"
                headers[name] = value
            # content-length is added by stomp.py: the body may hold NUL bytes.
            conn.send(destination, msg.body, content_type=msg.content_type, headers=headers)
        wanted = {f"r-{i}" for i in range(len(messages))}
        with receipts.changed:
            receipts.changed.wait_for(
                lambda: wanted <= receipts.ids or bool(receipts.errors), timeout=30
            )
        assert not receipts.errors, f"STOMP ERROR frames: {receipts.errors}"
        assert wanted <= receipts.ids, f"{len(wanted - receipts.ids)} SENDs without a receipt"
    finally:
        conn.disconnect()
    return [m.ident for m in messages]


def publish_kafka(bootstrap: str, topic: str, messages: Sequence[Outgoing]) -> list[str | None]:
    """kafka-python, acks=all; returns topic/partition/offset, the Kafka source's dedup key."""
    # Pinned: no version probe at start. tansu answers kafka-python's 2.5 requests (its own
    # probe settles on 3.9, which works too; 2.0 and older fail on InitProducerId).
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", api_version=(2, 5), linger_ms=5
    )
    try:
        futures = []
        for msg in messages:
            headers = [(k, v if isinstance(v, bytes) else v.encode()) for k, v in msg.headers]
            headers.append(("content-type", msg.content_type.encode()))
            futures.append(producer.send(topic, msg.body, key=msg.kafka_key, headers=headers))
        producer.flush(30)
        keys: list[str | None] = []
        for future in futures:
            meta = future.get(timeout=30)
            keys.append(f"{meta.topic}/{meta.partition}/{meta.offset}")
        return keys
    finally:
        producer.close(10)


def publish_mqtt(port: int, topic: str, messages: Sequence[Outgoing]) -> list[str | None]:
    """paho-mqtt, MQTT 5, QoS 1: each waits for its PUBACK. ``ident`` is user property
    ``msg-id`` (the route's dedup key); the content type is the MQTT 5 property."""
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"jw-hostile-pub-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5,
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = []
        for msg in messages:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ContentType = msg.content_type
            properties.UserProperty = ("msg-id", msg.ident)
            for name, value in msg.headers:
                assert isinstance(value, str), "an MQTT user property is a UTF-8 string"
                properties.UserProperty = (name, value)
            infos.append(client.publish(topic, msg.body, qos=1, properties=properties))
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published(), f"no PUBACK for mid {info.mid} (rc {info.rc})"
    finally:
        client.disconnect()
        client.loop_stop()
    return [m.ident for m in messages]


# --- the tally ---------------------------------------------------------------------------


ROWS_SQL = (
    "SELECT id, status, handler, body, payload::text AS payload, last_error, dedup_key"
    " FROM jobwire.jobs ORDER BY id"
)


async def job_rows(url: str) -> list[asyncpg.Record]:
    """Every job row, with what the tally needs."""
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(ROWS_SQL)
        return rows
    finally:
        await conn.close()


def _json(data: bytes | str | None) -> Any:
    """Parsed JSON, or a sentinel when it is none (too deep counts as none)."""
    if data is None:
        return _NOT_JSON
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return _NOT_JSON


_NOT_JSON = object()


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


@dataclass
class Tally:
    """Which rows each message got, and what is wrong with them."""

    goods: dict[int, list[asyncpg.Record]]
    cases: dict[str, list[asyncpg.Record]]
    hostile: dict[str, Hostile]
    unexplained: list[asyncpg.Record] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        """Every good message succeeded, and every hostile one has a row in a final status
        (or there are as many final rows as messages: rows that match none will not)."""
        if not all(any(r["status"] == "succeeded" for r in rows) for rows in self.goods.values()):
            return False
        final = sum(r["status"] in TERMINAL for r in self.unexplained) + sum(
            r["status"] in TERMINAL for rows in self.cases.values() for r in rows
        )
        return final >= len(self.cases) or all(
            any(r["status"] in TERMINAL for r in rows) for rows in self.cases.values()
        )

    def case_problems(self) -> dict[str, str]:
        """Case name -> what is wrong with its row(s); absent when it kept the promise."""
        problems = {}
        for name, rows in self.cases.items():
            case = self.hostile[name]
            if not rows:
                problems[name] = "no job row with its dedup key, raw body or JSON"
                continue
            wrong = []
            if len(rows) > 1:
                wrong.append(f"{len(rows)} job rows")
            for row in rows:
                if row["status"] not in case.allowed:
                    wrong.append(f"status {row['status']} (want {'/'.join(sorted(case.allowed))})")
                if row["status"] == "failed" and not (row["last_error"] or "").strip():
                    wrong.append("failed without a reason in last_error")
                if row["dedup_key"] is None:
                    # Every source here has a dedup key for every message (guarantee 2).
                    wrong.append("no dedup key: a redelivery would make a second job")
                if not _keeps_body(row, case.message.body):
                    wrong.append(
                        f"raw body not kept (body={_short(row['body'])}, "
                        f"payload={_short(row['payload'])})"
                    )
            if wrong:
                problems[name] = "; ".join(wrong)
        return problems

    def good_problems(self) -> dict[int, str]:
        """Good message n -> what is wrong (missing, doubled, not succeeded)."""
        problems = {}
        for n, rows in self.goods.items():
            if not rows:
                problems[n] = "missing"
            elif len(rows) > 1:
                problems[n] = f"{len(rows)} job rows"
            elif rows[0]["status"] != "succeeded":
                problems[n] = f"status {rows[0]['status']}: {rows[0]['last_error']}"
        return problems

    @property
    def ok(self) -> bool:
        """The promise kept, to the row."""
        return not (self.case_problems() or self.good_problems() or self.unexplained)

    def outcomes(self) -> str:
        """One line per hostile case: its row's status and reason, or its problem."""
        problems = self.case_problems()
        lines = []
        for name, rows in self.cases.items():
            seen = (
                ", ".join(f"{r['status']} [{(r['last_error'] or '')[:100]}]" for r in rows) or "-"
            )
            verdict = f"FAIL: {problems[name]}" if name in problems else "ok"
            lines.append(f"  {name}: {verdict} | rows: {seen}")
        return "\n".join(lines)

    def summary(self) -> str:
        """What a failing test prints."""
        goods = self.good_problems()
        missing = sorted(n for n, p in goods.items() if p == "missing")
        other = {n: p for n, p in goods.items() if p != "missing"}
        lines = [
            f"good messages: {2 * GOOD - len(goods)}/{2 * GOOD} fine; "
            f"missing {len(missing)}: {_ranges(missing)}",
        ]
        if other:
            lines.append(f"good messages with other problems: {dict(list(other.items())[:10])}")
        lines.append("hostile cases:")
        lines.append(self.outcomes())
        if self.unexplained:
            lines.append(f"{len(self.unexplained)} job rows from no published message:")
            lines.extend(
                f"  id={r['id']} status={r['status']} handler={r['handler']!r} "
                f"dedup_key={r['dedup_key']!r} body={_short(r['body'])} "
                f"last_error={_short(r['last_error'])}"
                for r in self.unexplained[:10]
            )
        return "\n".join(lines)


def _keeps_body(row: asyncpg.Record, raw: bytes) -> bool:
    if row["body"] is not None and bytes(row["body"]) == raw:
        return True
    parsed = _json(raw)
    return parsed is not _NOT_JSON and _json(row["payload"]) == parsed


def _ranges(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    spans, start, prev = [], numbers[0], numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        spans.append(f"{start}" if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(spans)


def assess(
    rows: Sequence[asyncpg.Record],
    cases: Sequence[Hostile],
    keys: Sequence[str | None],
    source: str,
) -> Tally:
    """Map rows to the published messages (``goods_around(cases)``, whose dedup keys the
    publisher returned as ``keys``)."""
    outgoing = goods_around(cases)
    owner: dict[str, tuple[str, Any]] = {}  # prefixed dedup key -> ("good", n) | ("case", name)
    for index, key in enumerate(keys):
        if key is None:
            continue
        if index < GOOD:
            owner[f"{source}:{key}"] = ("good", index)
        elif index < GOOD + len(cases):
            owner[f"{source}:{key}"] = ("case", cases[index - GOOD].name)
        else:
            owner[f"{source}:{key}"] = ("good", index - len(cases))
    assert len(outgoing) == len(keys)
    by_body = {c.message.body: c.name for c in cases}
    by_json = [(_json(c.message.body), c.name) for c in cases]
    tally = Tally(
        goods={n: [] for n in range(2 * GOOD)},
        cases={c.name: [] for c in cases},
        hostile={c.name: c for c in cases},
    )
    for row in rows:
        kind, which = owner.get(row["dedup_key"] or "", (None, None))
        if kind is None and row["body"] is not None and bytes(row["body"]) in by_body:
            kind, which = "case", by_body[bytes(row["body"])]
        if kind is None:
            data = _json(row["payload"])
            if data is _NOT_JSON or data is None:
                data = _json(row["body"])
            if isinstance(data, dict) and "n" in data and "case" not in data:
                kind, which = "good", data["n"]
            else:
                for parsed, name in by_json:
                    if parsed is not _NOT_JSON and parsed == data:
                        kind, which = "case", name
                        break
        if kind == "good" and which in tally.goods:
            tally.goods[which].append(row)
        elif kind == "case":
            tally.cases[which].append(row)
        else:
            tally.unexplained.append(row)
    return tally


def forbidden_events(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Log lines that say a source was held, or a batch thrown back, over a message.

    ``intake_store_failed`` and ``intake_held`` (reason store): the store was blamed and the
    source paused; ``intake_batch_crashed``: the whole batch went back to the broker (AMQP,
    STOMP) or is retried forever in memory (Kafka, MQTT), with the good messages in it.
    """
    return [
        e
        for e in events
        if e.get("event") in ("intake_store_failed", "intake_batch_crashed")
        or (e.get("event") == "intake_held" and e.get("reason") == "store")
    ]


def describe(events: Sequence[dict[str, Any]]) -> str:
    """Log lines in short: event, reason, error, and an exception's last line."""
    lines = []
    for e in events:
        fields = {k: e[k] for k in ("event", "reason", "error", "size", "kept") if k in e}
        if e.get("exception"):
            fields["exception"] = str(e["exception"]).strip().splitlines()[-1]
        lines.append(f"  {fields}")
    return "\n".join(lines)
