"""The deployment files: the systemd unit verifies, manifests match their schemas, configs load.

No container engine or cluster runs here, so the compose file is validated against the
Compose specification's schema and the Kubernetes manifests against the Kubernetes API
schemas (kubernetes-validate, strict: unknown fields fail).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobwire.config import parse_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = (DEPLOY / "systemd" / "jobwire.service").read_text()
    # verify checks that ExecStart exists: point it at this checkout's jobwire.
    unit = unit.replace("/opt/jobwire/venv/bin/jobwire", str(BIN / "jobwire"))
    path = tmp_path / "jobwire.service"
    path.write_text(unit)
    proc = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert "Type=notify" in unit and "WatchdogSec=" in unit


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    proc = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", str(DEPLOY / "kubernetes" / "jobwire.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "jobwire.yaml").open())}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }


def test_compose_file_matches_the_compose_spec() -> None:
    proc = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert set(services) == {"jobwire", "postgres", "rabbitmq", "mosquitto", "kafka"}


ENV = {
    "DATABASE_URL": "postgresql://jobwire@db/jobwire",
    "JOBWIRE_ADMIN_TOKEN": "0123456789abcdef0123",
    "POD_NAME": "jobwire-0",
}


def test_shipped_jobwire_configs_are_valid() -> None:
    compose = DEPLOY / "compose.jobwire.yaml"
    parse_config(compose.read_text(), str(compose), ENV)
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "jobwire.yaml").open()))
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    config = parse_config(configmap["data"]["jobwire.yaml"], "configmap", ENV)
    assert config.http.listen == "0.0.0.0:8080"


def test_containerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "container" / "Containerfile").read_text()
    assert "USER 10001" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
