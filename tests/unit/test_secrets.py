"""Secrets never printed: URL passwords and secret config fields, in every output path."""

from __future__ import annotations

import io
import json
import logging
import sys
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from jobwire import redaction
from jobwire.app import Daemon
from jobwire.config import Config, ConfigError, parse_config
from jobwire.handlers import HandlerRegistry
from jobwire.logs import RedactingFormatter, _json_formatter, _redacting, redact_event
from jobwire.redaction import (
    MASK,
    is_secret_field,
    is_secret_name,
    mask_url,
    model_classes,
    raw_secret_values,
    redact,
    redact_data,
    remember,
    secret_field_names,
    secret_values,
)


def unique(prefix: str) -> str:
    """A secret no other test (nor any message) contains; remember() is process-wide."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- the models ------------------------------------------------------------------------


def test_every_secret_named_field_of_every_model_is_marked_secret() -> None:
    classes = model_classes(Config)
    names = {cls.__name__ for cls in classes}
    # The walk must reach into lists, dicts and the sources' discriminated union.
    assert {"AmqpSource", "StompSource", "KafkaSource", "MqttSource", "HttpConfig"} <= names
    unmarked = [
        f"{cls.__name__}.{name}"
        for cls in classes
        for name, field in cls.model_fields.items()
        if is_secret_name(name) and not is_secret_field(field)
    ]
    assert unmarked == []
    assert {"password", "sasl_password", "admin_token"} <= secret_field_names(Config)


def test_every_marked_field_is_collected_from_a_config_and_from_raw_yaml() -> None:
    for cls in model_classes(Config):
        for name, field in cls.model_fields.items():
            if not is_secret_field(field):
                continue
            value = unique(name)
            # model_construct: no validation, so any model can be built with just this field.
            instance = cls.model_construct(**{name: value})
            assert value in secret_values(instance), f"{cls.__name__}.{name}"
            key = field.alias or name
            assert value in raw_secret_values({key: value}, secret_field_names(Config))


def test_secret_names() -> None:
    for name in ("password", "sasl_password", "sasl_plain_password", "admin_token", "read_token"):
        assert is_secret_name(name), name
    for name in ("api_key", "client_secret", "private_key", "passphrase", "pass"):
        assert is_secret_name(name), name
    # Paths, selectors and routing are not secrets.
    for name in ("key_file", "dedup_key", "routing_keys", "username", "passive", "url"):
        assert not is_secret_name(name), name


def test_secret_values_of_a_loaded_config() -> None:
    text = """
database: {url: "postgresql://jw:pg%40pass-1@db:5432/jobs"}
http: {admin_token: "admin-token-0123456789"}
sources:
  - {name: a, type: amqp, url: "amqp://u:amqp-pass-2@rabbit/", queue: q, route: {handler: x}}
  - {name: s, type: stomp, password: stomp-pass-3, destination: /queue/q, route: {handler: x}}
  - name: k
    type: kafka
    topics: [t]
    security_protocol: SASL_SSL
    sasl_mechanism: PLAIN
    sasl_password: kafka-pass-4
    route: {handler: x}
  - {name: m, type: mqtt, url: "mqtt://u:mqtt-pass-5@mq", password: mqtt-pass-6,
     topics: [t], route: {handler: x}}
"""
    found = secret_values(parse_config(text, "f.yaml", {}))
    expected = {
        "pg%40pass-1",
        "pg@pass-1",  # as written in the URL and as the client sends it
        "admin-token-0123456789",
        "amqp-pass-2",
        "stomp-pass-3",
        "kafka-pass-4",
        "mqtt-pass-5",
        "mqtt-pass-6",
    }
    assert expected <= found


# -- masking -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://user:pass@host:5672/vh", f"amqp://user:{MASK}@host:5672/vh"),
        ("postgresql://jw:s3cret@db/jobs", f"postgresql://jw:{MASK}@db/jobs"),
        ("mqtts://u:p%40ss@mq:8883", f"mqtts://u:{MASK}@mq:8883"),
        ("amqp://u:p@ss@host/", f"amqp://u:{MASK}@host/"),  # an unencoded @ in the password
        ("amqp://guest@host:5672/", "amqp://guest@host:5672/"),  # no password: unchanged
        ("amqp://host:5672/", "amqp://host:5672/"),
        ("embedded", "embedded"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_redact_free_text() -> None:
    text = "connect to amqp://u:hunter22@h:5672/ failed; retry amqp://u:hunter22@h2/ later"
    assert redact(text) == (
        f"connect to amqp://u:{MASK}@h:5672/ failed; retry amqp://u:{MASK}@h2/ later"
    )
    assert redact("token abcdef-1234 refused", {"abcdef-1234"}) == f"token {MASK} refused"
    # Longest first: a secret containing another is masked whole.
    assert redact("x=longsecret", {"long", "longsecret"}) == f"x={MASK}"
    # Too short to replace in free text without garbling it.
    assert redact("a bc", {"bc"}) == "a bc"


def test_redact_data_walks_json_like_values() -> None:
    data = {"a": ["amqp://u:pw12@h/", 3, None], "b": {"c": "pw12 leaked"}}
    assert redact_data(data, {"pw12"}) == {
        "a": [f"amqp://u:{MASK}@h/", 3, None],
        "b": {"c": f"{MASK} leaked"},
    }


# -- where it is printed ---------------------------------------------------------------


def test_log_events_are_redacted() -> None:
    secret = unique("remembered")
    remember({secret})
    err = ConnectionError(f"login with {secret} refused")
    out = redact_event(
        None,
        "warning",
        {
            "event": "source_state",
            "url": "amqp://u:inline-pw@h/",
            "error": f"AuthError: {secret}",
            "nested": {"list": [f"x {secret}"]},
            "exc": err,
            "count": 3,
        },
    )
    assert out["url"] == f"amqp://u:{MASK}@h/"
    assert out["error"] == f"AuthError: {MASK}"
    assert out["nested"] == {"list": [f"x {MASK}"]}
    assert secret not in str(out["exc"]) and MASK in str(out["exc"])
    assert out["count"] == 3


def test_formatted_tracebacks_are_redacted() -> None:
    secret = unique("traceback")
    remember({secret})
    try:
        raise RuntimeError(f"cannot connect to amqp://u:{secret}@h/")
    except RuntimeError:
        exc_info = sys.exc_info()
    sio = io.StringIO()
    _redacting(structlog.dev.plain_traceback)(sio, exc_info)  # type: ignore[arg-type]
    assert "RuntimeError" in sio.getvalue() and secret not in sio.getvalue()
    record = logging.LogRecord(
        "lib", logging.ERROR, __file__, 1, "lost %s", (f"pw={secret}",), exc_info
    )
    line = RedactingFormatter("%(message)s").format(record)
    assert "RuntimeError" in line and secret not in line
    # In a JSON log, a library's line is one JSON object too, redacted alike.
    parsed = json.loads(_json_formatter().format(record))
    assert (parsed["level"], parsed["logger"]) == ("error", "lib")
    assert parsed["event"].startswith("lost pw=") and "RuntimeError" in parsed["exception"]
    assert secret not in json.dumps(parsed)


def test_published_source_state_is_redacted() -> None:
    secret = unique("amqp")
    config = parse_config(
        f"sources: [{{name: a, type: amqp, url: 'amqp://u:{secret}@h/', queue: q,"
        " route: {handler: noop}}]",
        "f.yaml",
        {},
    )
    daemon = Daemon(config, HandlerRegistry.from_config({}))
    described: dict[str, Any] = {
        "state": "down",
        "last_error": f"AMQPConnectionError: amqp://u:{secret}@h/ refused ({secret})",
    }
    daemon.sources = [
        SimpleNamespace(cfg=SimpleNamespace(name="a"), describe=lambda: described)  # type: ignore[list-item]
    ]
    shown = daemon.describe_sources()
    assert secret not in str(shown)
    assert shown["a"]["last_error"] == f"AMQPConnectionError: amqp://u:{MASK}@h/ refused ({MASK})"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("host=127.0.0.1 user=u password=KwSecretPw1 dbname=x", "KwSecretPw1"),
        ("host=h password='Kw Secret\\' Pw2' dbname=x", "Kw Secret"),
        ("mysql://h/db?password=QuerySecret1", "QuerySecret1"),
        ("https://h/x?a=1&access_token=QueryToken12&b=2", "QueryToken12"),
        ("Server=h;Password=SemiSecret1;Database=x", "SemiSecret1"),
    ],
)
def test_key_value_passwords_are_masked(text: str, secret: str) -> None:
    masked = redaction.redact(text)
    assert secret not in masked
    assert redaction.MASK in masked
    assert secret in " ".join(redaction.url_passwords(text))


def test_key_value_masking_leaves_other_keys_alone() -> None:
    text = "host=h user=u dbname=x password_file=/run/pw bypass=1"
    assert redaction.redact(text) == text


def test_a_dsn_in_a_config_error_is_masked() -> None:
    text = 'database: {url: "host=127.0.0.1 user=u password=KwSecretPw1 dbname=x"}'
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", {})
    assert "KwSecretPw1" not in str(info.value)
    assert "database.url" in str(info.value)
