"""The deployment files: the systemd unit verifies, manifests match their schemas, configs load,
the alert rules and the dashboard's queries pass promtool and read only exported series.

No container engine or cluster runs here, so the compose file is validated against the
Compose specification's schema and the Kubernetes manifests against the Kubernetes API
schemas (kubernetes-validate, strict: unknown fields fail).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobwire.config import parse_config
from jobwire.metrics import Metrics
from jobwire.store.memory import MemoryStore

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


PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "jobwire.json"
NEEDS_PROMTOOL = (
    "promtool is not installed (scripts/services installs it: apt-get install prometheus)"
)


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(NEEDS_PROMTOOL)
    return promtool


def _panel_exprs() -> list[str]:
    """The PromQL of every panel of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def _dashboard_exprs() -> list[str]:
    """Every query of the dashboard: its panels' and its variables' (Grafana functions)."""
    board = json.loads(DASHBOARD.read_text())
    variables = [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return _panel_exprs() + variables


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = _promtool()
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]):
        proc = subprocess.run(
            [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"][0]["rules"]
    for rule in rules:
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Grafana does not check a query until it runs it: promtool parses each one, as a
    recording rule, with the dashboard's variables filled in."""
    promtool = _promtool()
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rules = [
        {
            "record": f"jobwire:dashboard_query_{i}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$job", ".+"),
        }
        for i, expr in enumerate(_panel_exprs())
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _exported_names() -> set[str]:
    """Every sample name the daemon's /metrics can show: each family the collector yields
    after a refresh (with a source of every kind of figure), with its type's suffixes."""
    sources = {
        "events": {
            "state": "up",
            "frame_reader": "jobwire",
            "poison": {"undecodable": 1},
            "lag": {"events/0": 3},
        }
    }
    metrics = Metrics(MemoryStore(), lambda: {}, lambda: sources, db_pool=lambda: (2, 1))
    asyncio.run(metrics.refresh(max_age=0))
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count"),
    }
    names = set()
    for family in metrics.registry.collect():
        # A counter's or histogram's own name is no series: only its suffixed ones are.
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_and_alerts_read_only_series_the_daemon_exports() -> None:
    exported = _exported_names()
    used = {
        name
        for expr in _dashboard_exprs() + _rule_exprs()
        for name in re.findall(r"\b((?:jobwire|process)_[a-z_]+)\b", expr)
    }
    assert "jobwire_queue_oldest_ready_seconds" in used  # the scan found the names
    assert used - exported == set()
