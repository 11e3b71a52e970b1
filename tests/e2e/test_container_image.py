"""The container image, built from deploy/container/Containerfile and run against the host's
PostgreSQL: /healthz answers, a job enqueued over HTTP runs, the process is uid 10001, and a
stop drains and exits 0.

Not in the default run (marker ``container``; the build takes several minutes on vfs):
``.venv/bin/pytest -m container tests/e2e/test_container_image.py -s``.

These machines run no Docker engine and pull from no registry. Podman runs here rootful with
runc, cgroupfs, vfs storage and no default ulimits (crun refuses this host's hybrid cgroups,
and setting RLIMIT_NPROC is not permitted). The Containerfile's base, ``python:3.11-slim``,
cannot be pulled, so when no image of that name is present the test makes a stand-in of it:
Debian bookworm (debootstrap, from the machine's Debian mirror) with its Python 3.11, venv and
pip, and the host's CA bundle for pip (this network reaches PyPI through a proxy with its own
CA). The Containerfile itself is built as shipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ADMIN_URL, db_url

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
BASE = "docker.io/library/python:3.11-slim"
IMAGE = "localhost/jobwire:test"
TOKEN = "container-test-token"


def podman_argv() -> list[str]:
    """podman as it runs on these machines (see the module's docstring)."""
    return [
        *("podman", "--storage-driver", "vfs", "--runtime", "runc"),
        *("--cgroup-manager", "cgroupfs"),
    ]


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman and runc are not installed (apt-get install podman runc)")
    if os.geteuid() != 0:
        pytest.skip("the test runs podman rootful")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    os.environ["CONTAINERS_CONF"] = str(conf)
    try:
        yield podman_argv()
    finally:
        os.environ.pop("CONTAINERS_CONF", None)


def run(argv: list[str], timeout: float = 900) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, (
        f"{' '.join(argv[:8])}...: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    )
    return done.stdout


def ensure_base(podman: list[str]) -> None:
    """The Containerfile's base image, or a local stand-in for it (see the docstring)."""
    found = subprocess.run([*podman, "image", "exists", BASE], check=False)
    if found.returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        pytest.skip(
            f"no {BASE} and no debootstrap to make a stand-in (apt-get install debootstrap)"
        )
    root = Path(tempfile.mkdtemp(prefix="jw-base-"))
    try:
        run(
            [
                *("debootstrap", "--variant=minbase"),
                "--include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates",
                *("bookworm", str(root), "http://deb.debian.org/debian"),
            ]
        )
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        importer = subprocess.run(
            [
                *podman,
                "import",
                "--change",
                'CMD ["python3"]',
                "--change",
                "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                "-",
                BASE,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        tar.wait(60)
        assert importer.returncode == 0, importer.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image(podman: list[str]) -> str:
    ensure_base(podman)
    run(
        [
            *podman,
            "build",
            "--format",
            "docker",
            "--network",
            "host",
            "--pull=never",
            "-f",
            str(REPO / "deploy/container/Containerfile"),
            "-t",
            IMAGE,
            str(REPO),
        ],
        timeout=1500,
    )
    return IMAGE


def get(url: str, token: str | None = None, data: bytes | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.status, json.loads(answer.read() or b"null")


def wait(probe: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()  # type: ignore[operator]
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def test_the_image_serves_health_runs_a_job_as_10001_and_drains_on_stop(
    podman: list[str], image: str, tmp_path: Path
) -> None:
    name = f"jwimg_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    port = 18000 + int(uuid.uuid4().int % 1000)
    config = tmp_path / "jobwire.yaml"
    config.write_text(
        json.dumps(
            {
                "database": {"url": db_url(name)},
                "http": {"listen": f"127.0.0.1:{port}", "admin_token": TOKEN},
                "logging": {"format": "json"},
            }
        )
    )
    config.chmod(0o644)
    tmp_path.chmod(0o755)
    container = f"jw-test-{uuid.uuid4().hex[:8]}"
    try:
        run(
            [
                *podman,
                "run",
                "-d",
                "--name",
                container,
                "--network",
                "host",
                "-v",
                f"{config}:/etc/jobwire/jobwire.yaml:ro",
                image,
            ]
        )
        base = f"http://127.0.0.1:{port}"
        wait(lambda: get(f"{base}/healthz")[0] == 200, 120, "/healthz")
        _, created = get(
            f"{base}/api/v1/jobs",
            TOKEN,
            json.dumps({"handler": "echo", "payload": {"x": 1}}).encode(),
        )
        job_id = created["id"]  # type: ignore[index]
        wait(
            lambda: get(f"{base}/api/v1/jobs/{job_id}", TOKEN)[1]["status"] == "succeeded",  # type: ignore[index]
            60,
            "the job to succeed",
        )
        assert run([*podman, "exec", container, "id", "-u"]).strip() == "10001"
        run([*podman, "stop", "-t", "60", container], timeout=120)
        code = run([*podman, "inspect", container, "--format", "{{.State.ExitCode}}"]).strip()
        assert code == "0"
        logs = subprocess.run(
            [*podman, "logs", container], capture_output=True, text=True, timeout=60, check=False
        )
        assert '"event": "daemon_stopped"' in logs.stdout + logs.stderr
    finally:
        subprocess.run([*podman, "rm", "-f", container], capture_output=True, check=False)
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
