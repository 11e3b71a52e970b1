"""The HTTP webhook source's settings, its whole-config checks, its credentials and the
``query:NAME`` selector: no database needed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from jobwire.adapters.http.auth import sign, signature_problem, token_problem
from jobwire.adapters.http.config import HttpSource, SignatureConfig, http_source_problems
from jobwire.config import Config, ConfigError, parse_config
from jobwire.selectors import parse_selector
from tests.support.daemon import jobwire, write_config

TOKEN = "hook-token-for-tests-0123456789"


def hook(**extra: Any) -> dict[str, Any]:
    return {
        "name": "gh",
        "type": "http",
        "path": "/hooks/github",
        "token": TOKEN,
        "route": {"handler": "noop"},
        **extra,
    }


def problems_of(data: dict[str, Any]) -> list[str]:
    import yaml

    try:
        parse_config(yaml.safe_dump(data), "jobwire.yaml")
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_a_webhook_source_parses_with_its_defaults() -> None:
    config = Config.model_validate({"sources": [hook()]})
    (source,) = config.sources
    assert isinstance(source, HttpSource)
    assert source.path == "/hooks/github" and source.retry_after == 5
    assert "x-github-event" in source.headers
    assert http_source_problems(config, "f.yaml") == []


@pytest.mark.parametrize("path", ["/api", "/api/v1/hook", "/ui/x", "/metrics", "/healthz"])
def test_a_path_of_the_daemon_itself_is_refused(path: str) -> None:
    (problem,) = problems_of({"sources": [hook(path=path)]})
    assert "sources[0]" in problem and "the daemon's own" in problem


@pytest.mark.parametrize("path", ["hooks", "/hooks/", "/a b", "/"])
def test_a_malformed_path_is_refused(path: str) -> None:
    (problem,) = problems_of({"sources": [hook(path=path)]})
    assert "sources[0].path" in problem


def test_a_webhook_without_token_or_signature_is_refused() -> None:
    (problem,) = problems_of({"sources": [hook(token=None)]})
    assert "give a token or a signature" in problem
    signed = hook(token=None, signature={"scheme": "github", "secret": "s3cret-key"})
    assert problems_of({"sources": [signed]}) == []


@pytest.mark.parametrize(
    ("key", "selector"),
    [
        ("handler_from", "header:X-GitHub-Event"),
        ("priority", "query:priority"),
        ("dedup_key", "header:X-GitHub-Delivery"),
        ("dedup_key", "query:delivery"),
        ("dedup_key", "property:remote"),
    ],
)
def test_a_signature_only_source_may_not_route_on_unsigned_headers_or_query(
    key: str, selector: str
) -> None:
    route = {"handler": "noop", key: selector}
    if key == "handler_from":
        del route["handler"]
    signature = {"scheme": "github", "secret": "s3cret-key"}
    (problem,) = problems_of({"sources": [hook(token=None, signature=signature, route=route)]})
    assert f"route.{key}" in problem and "not signed" in problem
    # With a token the caller is known: allowed. The signed body is always fine.
    assert problems_of({"sources": [hook(signature=signature, route=route)]}) == []
    signed_body = {**route, key: "json:$.x"} if key != "priority" else route | {key: "json:$.p"}
    assert (
        problems_of({"sources": [hook(token=None, signature=signature, route=signed_body)]}) == []
    )


def test_options_an_http_request_cannot_have_are_refused() -> None:
    (problem,) = problems_of({"sources": [hook(on_invalid="dead-letter")]})
    assert "dead-letter" in problem
    (problem,) = problems_of({"sources": [hook(route={"handler": "noop", "dedup_key": "none"})]})
    assert "dedup_key none" in problem
    (problem,) = problems_of({"sources": [hook(headers=["X-Ok", "bad header"])]})
    assert "not a header name" in problem


def test_paths_that_clash_and_a_missing_http_server_are_named() -> None:
    config = Config.model_validate(
        {
            "http": {"enabled": False},
            "sources": [hook(), hook(name="other", path="/hooks/GitHub")],
        }
    )
    found = [(p.key, p.reason) for p in http_source_problems(config, "f.yaml")]
    assert ("sources[1].path", "'/hooks/GitHub' is also sources[0].path") in found
    assert [key for key, _ in found].count("http.enabled") == 2


def test_check_config_exits_2_naming_the_key_and_never_prints_a_secret(tmp_path: Path) -> None:
    secret = "sig-secret-never-printed-42"
    file = write_config(
        tmp_path / "jobwire.yaml",
        {
            "http": {"enabled": False},
            "sources": [
                hook(signature={"scheme": "stripe", "secret": secret}),
                hook(name="b", token=TOKEN.upper()),
            ],
        },
    )
    out = jobwire("check-config", "-c", str(file), check=False)
    assert out.returncode == 2
    assert "http.enabled" in out.stderr and "sources[1].path" in out.stderr
    for value in (secret, TOKEN, TOKEN.upper()):
        assert value not in out.stdout + out.stderr
    # A bad secret value is not echoed either.
    file = write_config(tmp_path / "short.yaml", {"sources": [hook(token="short-tok")]})
    out = jobwire("check-config", "-c", str(file), check=False)
    assert out.returncode == 2 and "sources[0].token" in out.stderr
    assert "short-tok" not in out.stdout + out.stderr


# -- credentials -----------------------------------------------------------------------


def test_the_bearer_token_must_match() -> None:
    source = HttpSource.model_validate(hook())
    assert token_problem(source, CIMultiDict({"authorization": f"Bearer {TOKEN}"})) is None
    assert token_problem(source, CIMultiDict({"Authorization": f"bearer {TOKEN}"})) is None
    assert token_problem(source, CIMultiDict()) is not None
    assert token_problem(source, CIMultiDict({"Authorization": TOKEN})) is not None
    assert token_problem(source, CIMultiDict({"Authorization": "Bearer x" + TOKEN})) is not None


@pytest.mark.parametrize("scheme", ["github", "stripe", "hmac-sha256"])
def test_a_signature_checks_the_exact_body(scheme: str) -> None:
    cfg = SignatureConfig(scheme=scheme, secret="s3cret-key")
    body = b'{"a": 1}'
    header = cfg.header_name()
    assert (
        header
        == {
            "github": "X-Hub-Signature-256",
            "stripe": "Stripe-Signature",
            "hmac-sha256": "X-Signature",
        }[scheme]
    )
    good = CIMultiDict({header.lower(): sign(cfg, body)})
    assert signature_problem(cfg, good, body) is None
    assert signature_problem(cfg, good, body + b" ") is not None
    assert signature_problem(cfg, CIMultiDict(), body) == f"the {header} header is missing"
    other = SignatureConfig(scheme=scheme, secret="other-key")
    assert signature_problem(other, good, body) is not None
    garbage = CIMultiDict({header: "t=x,v1=zz" if scheme == "stripe" else "sha1=abc"})
    assert signature_problem(cfg, garbage, body) is not None


def test_a_stripe_signature_has_a_tolerance_and_any_v1_may_match() -> None:
    cfg = SignatureConfig(scheme="stripe", secret="whsec_x1", tolerance=60)
    body = b"{}"
    now = time.time()
    value = sign(cfg, body, now=now - 30)
    assert signature_problem(cfg, {"Stripe-Signature": value}, body, now=now) is None
    late = signature_problem(cfg, {"Stripe-Signature": value}, body, now=now + 100)
    assert late is not None and "tolerance" in late
    rolled = value.replace(",v1=", ",v1=00ff,v0=ab,v1=")  # a rolled secret's extra signature
    assert signature_problem(cfg, {"Stripe-Signature": rolled}, body, now=now) is None


@pytest.mark.parametrize("stamp", ["9" * 13, "9" * 5000, "1" + "0" * 400])
def test_a_huge_stripe_timestamp_is_a_problem_not_an_exception(stamp: str) -> None:
    cfg = SignatureConfig(scheme="stripe", secret="whsec_x1")
    problem = signature_problem(cfg, {"Stripe-Signature": f"t={stamp},v1=00"}, b"{}")
    assert problem is not None and "t=<unix time>" in problem


@pytest.mark.parametrize("scheme", ["github", "stripe", "hmac-sha256"])
def test_undecodable_header_bytes_are_a_problem_not_an_exception(scheme: str) -> None:
    # aiohttp hands undecodable header bytes over as surrogate escapes.
    odd = b"\xff\xfe".decode("utf-8", "surrogateescape")
    cfg = SignatureConfig(scheme=scheme, secret="s3cret-key")
    value = {"github": f"sha256={odd}", "stripe": f"t=1,v1={odd}"}.get(scheme, odd)
    assert signature_problem(cfg, {cfg.header_name(): value}, b"{}", now=1) is not None
    source = HttpSource.model_validate(hook())
    assert token_problem(source, {"Authorization": f"Bearer {TOKEN}{odd}"}) is not None
    assert token_problem(source, {"Authorization": "Bearer \ud800"}) is not None


def test_a_custom_header_name_is_used() -> None:
    cfg = SignatureConfig(scheme="hmac-sha256", secret="s3cret-key", header="X-Shop-Hmac")
    body = b"payload"
    assert cfg.header_name() == "X-Shop-Hmac"
    signed = {"X-Shop-Hmac": "sha256=" + sign(cfg, body)}  # a sha256= prefix is accepted
    assert signature_problem(cfg, signed, body) is None


# -- the query selector ----------------------------------------------------------------


def test_a_query_selector_reads_the_query_property() -> None:
    selector = parse_selector("query:delivery")
    assert (selector.kind, selector.name) == ("query", "delivery")
    assert selector.select({}, {"query": {"delivery": "d-1"}}, None) == "d-1"
    assert selector.select({}, {}, None) is None  # a broker source has no query
    with pytest.raises(ValueError, match="query:NAME"):
        parse_selector("query")
