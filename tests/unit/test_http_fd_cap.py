"""HTTP clients may hold at most half the process's descriptors: the rest stay for the
database pool and the brokers, whatever http.max_connections says."""

from __future__ import annotations

import resource

from structlog.testing import capture_logs

from jobwire.web.listener import connection_cap


def test_a_low_descriptor_limit_caps_the_http_connections() -> None:
    with capture_logs() as logs:
        assert connection_cap(512, open_files=64) == 32
    assert logs == [
        {
            "event": "http_connections_capped",
            "log_level": "warning",
            "max_connections": 512,
            "open_files": 64,
            "limit": 32,
        }
    ]


def test_room_enough_leaves_max_connections_as_configured() -> None:
    with capture_logs() as logs:
        assert connection_cap(512, open_files=1024) == 512
        assert connection_cap(512, open_files=resource.RLIM_INFINITY) == 512
    assert logs == []


def test_the_process_limit_is_read_when_not_given() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    with capture_logs():
        assert connection_cap(10**9) == (10**9 if soft == resource.RLIM_INFINITY else soft // 2)
