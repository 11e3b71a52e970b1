"""Which topic ``jobwire publish`` may send to, from a source's configured topics."""

from __future__ import annotations

from typing import Any

MQTT_WILDCARDS = "+#"
AMQP_WILDCARDS = "*#"


def mqtt_matches(topic_filter: str, topic: str) -> bool:
    """Whether an MQTT topic filter (+ one level, # the rest) matches a concrete topic."""
    want, have = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(want):
        if part == "#":
            return True
        if i >= len(have) or (part != "+" and part != have[i]):
            return False
    return len(want) == len(have)


def _wild(name: str, chars: str) -> bool:
    return any(ch in name for ch in chars)


def publish_topic(source: Any, topic: str | None) -> str | None:
    """Why publishing to ``topic`` (None: the source's own) cannot work, or None if it can."""
    kind = source.type
    if kind == "mqtt":
        filters: list[str] = source.topics
        if topic is None:
            if _wild(filters[0], MQTT_WILDCARDS):
                return (
                    f"source {source.name!r} reads the wildcard topic {filters[0]!r}: "
                    "pass --topic with a topic it matches"
                )
            return None
        if _wild(topic, MQTT_WILDCARDS):
            return f"--topic {topic!r} is a wildcard; publish to a concrete topic"
        if not any(mqtt_matches(f, topic) for f in filters):
            return f"--topic {topic!r} matches none of the source's topics ({', '.join(filters)})"
        return None
    if kind == "kafka":
        if topic is not None and topic not in source.topics:
            return (
                f"--topic {topic!r} is not one of the source's topics ({', '.join(source.topics)})"
            )
        return None
    if kind == "amqp":
        keys: list[str] = source.routing_keys if source.exchange else []
        key = topic if topic is not None else (keys[0] if keys else None)
        if topic is not None and not source.exchange:
            return f"source {source.name!r} publishes to its queue: --topic needs an exchange"
        if key is not None and _wild(key, AMQP_WILDCARDS) and source.exchange_type == "topic":
            what = "--topic" if topic is not None else f"source {source.name!r}'s routing key"
            return f"{what} {key!r} is a wildcard: pass --topic with a concrete routing key"
        return None
    if topic is not None:
        return f"{kind} sources publish to their destination; --topic does not apply"
    return None
