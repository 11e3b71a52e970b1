"""The one TLS context builder every adapter uses."""

from __future__ import annotations

import ssl

from jobwire.adapters.base import tls_context
from jobwire.config import TlsConfig


def test_no_tls_unless_configured_or_required() -> None:
    assert tls_context(None) is None
    context = tls_context(None, required=True)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED


def test_verify_false_turns_off_certificate_and_host_checks() -> None:
    context = tls_context(TlsConfig(verify=False))
    assert context is not None
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_NONE, False)
