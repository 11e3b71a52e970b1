"""The embedded database as operators break it: bad data_dirs, SIGKILL, stale pid files,
a server killed under a running daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_embedded import postgres_processes
from tests.support.daemon import jobwire, write_config

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def embedded_config(tmp_path: Path, data_dir: Path, **http: str) -> Path:
    """A config for the embedded default under data_dir, JSON logs, quick polling."""
    data = {
        "database": {"data_dir": str(data_dir)},
        "workers": {"poll_interval": "200ms"},
        "logging": {"format": "json"},
    }
    if http:
        data["http"] = http
    return write_config(tmp_path / "jobwire.yaml", data)


def job_status(config: Path, job_id: str) -> str:
    """The job's status, read through the CLI (which attaches to the daemon's server)."""
    out = jobwire("jobs", "show", job_id, "-c", str(config)).stdout
    return str(json.loads(out)["status"])


@pytest.mark.parametrize(
    ("layout", "code", "says"),
    [
        ("file", 2, "point database.data_dir at a writable directory"),
        ("space", 2, "contains whitespace"),
        ("garbage", 1, "did not start"),
    ],
)
def test_an_unusable_data_dir_is_a_clear_refusal(
    tmp_path: Path, layout: str, code: int, says: str
) -> None:
    data_dir = tmp_path / "var"
    if layout == "file":
        data_dir.write_text("not a directory")
    elif layout == "space":
        data_dir = tmp_path / "my var"
    else:
        # Not a PostgreSQL data directory, though it claims to be one.
        (data_dir / "pgdata").mkdir(parents=True)
        (data_dir / "pgdata" / "PG_VERSION").write_text("garbage\n")
    config = embedded_config(tmp_path, data_dir)
    out = jobwire("run", "-c", str(config), check=False, timeout=90)
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert says in out.stderr
    assert not postgres_processes(data_dir)
