"""workers.processes without processes: what auto means, and each child's own config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobwire.adapters.registry import reply_outputs
from jobwire.config import Config, ConfigError, parse_config
from jobwire.processes import ChildRole, available_cores, process_problems, resolve_processes
from jobwire.processes.cores import cgroup_cpu_limit

MQTT = {
    "name": "m",
    "type": "mqtt",
    "topics": ["t/#"],
    "shared_group": "g",
    "route": {"handler": "noop"},
}
HOOK = {
    "name": "gh",
    "type": "http",
    "path": "/hooks/gh",
    "token": "t" * 32,
    "route": {"handler": "noop"},
}


V2 = "0::/system.slice/jobwire.service\n"
V1 = "5:memory:/x\n4:cpu,cpuacct:/system.slice/jobwire.service\n0::/\n"


def _root(root: Path, proc_self_cgroup: str, files: dict[str, str]) -> Path:
    """A fake ``/``: /proc/self/cgroup and files under /sys/fs/cgroup."""
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "cgroup").write_text(proc_self_cgroup)
    for name, text in files.items():
        path = root / "sys" / "fs" / "cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


SERVICE = "system.slice/jobwire.service"


@pytest.mark.parametrize(
    ("cgroup", "files", "limit"),
    [
        (V2, {f"{SERVICE}/cpu.max": "max 100000"}, None),
        (V2, {f"{SERVICE}/cpu.max": "150000 100000"}, 1.5),
        # systemd's CPUQuota= on the slice binds the service under it; the smallest wins.
        (V2, {"system.slice/cpu.max": "50000 100000", f"{SERVICE}/cpu.max": "max 100000"}, 0.5),
        (V2, {"system.slice/cpu.max": "300000 100000", f"{SERVICE}/cpu.max": "200000 100000"}, 2.0),
        # A container without a cgroup namespace: the host's path is absent, the mount's
        # root is the container's cgroup.
        ("0::/docker/abc\n", {"cpu.max": "100000 100000"}, 1.0),
        (V2, {}, None),
        (V1, {f"cpu,cpuacct/{SERVICE}/cpu.cfs_quota_us": "-1"}, None),
        (
            V1,
            {
                f"cpu,cpuacct/{SERVICE}/cpu.cfs_quota_us": "300000",
                f"cpu,cpuacct/{SERVICE}/cpu.cfs_period_us": "100000",
            },
            3.0,
        ),
        ("3:cpu:/a\n", {"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "50000"}, 4.0),
        ("", {"cpu.max": "100000 100000"}, None),
    ],
)
def test_the_cgroup_quota_in_cores(
    tmp_path: Path, cgroup: str, files: dict[str, str], limit: float | None
) -> None:
    """cgroup v2's cpu.max along the path /proc/self/cgroup names, v1's CFS quota under the
    cpu controller, "no limit" in both spellings."""
    assert cgroup_cpu_limit(_root(tmp_path, cgroup, files)) == limit


def test_auto_is_the_cores_lowered_to_the_quota(tmp_path: Path) -> None:
    """A quota of half a core still runs one process; no quota: every core we may use."""
    half = _root(tmp_path / "half", V2, {"system.slice/cpu.max": "50000 100000"})
    assert available_cores(half) == 1
    unlimited = available_cores(_root(tmp_path / "none", V2, {f"{SERVICE}/cpu.max": "max 100000"}))
    assert unlimited >= 1
    assert resolve_processes("auto", embedded=False) == available_cores()
    assert resolve_processes("auto", embedded=True) == 1
    assert resolve_processes(3, embedded=False) == 3


def _config(**data: Any) -> Config:
    return Config.model_validate({"database": {"url": "postgresql://db/x"}, **data})


def test_process_0_keeps_the_config_and_the_others_give_up_http() -> None:
    """Children 1..N-1: no HTTP server, no webhook source, MQTT client ids of their own."""
    config = _config(
        sources=[MQTT, {**MQTT, "name": "m2", "client_id": "mine"}, HOOK],
        outputs={"out": {"type": "mqtt", "topic": "done"}},
    )
    assert ChildRole(0, 1).config(config) is config
    second = ChildRole(2, 1).config(config)
    assert not second.http.enabled
    assert [s.name for s in second.sources] == ["m", "m2"]
    ids = [getattr(s, "client_id", None) for s in second.sources]
    assert ids[0] is not None and ids[0].startswith("jobwire-") and ids[0].endswith("-m-2")
    assert ids[1] == "mine-2"
    output_id = getattr(second.outputs["out"], "client_id", None)
    assert output_id is not None and output_id.endswith("-out-2")
    long = _config(sources=[{**MQTT, "client_id": "x" * 128}])
    assert getattr(ChildRole(11, 1).config(long).sources[0], "client_id", "")[-3:] == "-11"
    # A replying source's reply client keeps the process's suffix too.
    replying = _config(sources=[{**MQTT, "client_id": "x" * 128, "reply": True}])
    ids = {
        getattr(reply_outputs(ChildRole(i, 1).config(replying))["reply:m"], "client_id", None)
        for i in (1, 2)
    }
    assert ids == {"x" * 120 + "-1-reply", "x" * 120 + "-2-reply"}


def test_the_role_comes_from_the_environment() -> None:
    """Set by the supervisor for its children only."""
    assert ChildRole.from_env({}) is None
    role = ChildRole(1, 4242)
    environ = {**role.env(), "PATH": "/bin"}
    assert ChildRole.from_env(environ) == role
    # Not passed on: a `jobwire run` a handler starts is no child of this supervisor.
    assert environ == {"PATH": "/bin"}


def test_one_process_needs_nothing_more() -> None:
    """The rules apply only above one process."""
    plain = {**MQTT}
    plain.pop("shared_group")
    assert process_problems(_config(sources=[plain]), "f") == []
    problems = process_problems(_config(workers={"processes": 2}, sources=[plain]), "f")
    assert [p.key for p in problems] == ["sources[0].shared_group"]
    topic = {"name": "s", "type": "stomp", "destination": "/topic/x", "route": {"handler": "noop"}}
    auto = _config(workers={"processes": "auto"}, sources=[topic])
    problems = process_problems(auto, "f", processes=4)
    assert [p.key for p in problems] == ["sources[0].durable_name"]
    assert "workers.processes auto each process" in problems[0].reason
    assert process_problems(auto, "f", processes=1) == []  # auto, started on one core
    # Checked without a start (check-config): auto may run several on another host.
    assert [p.key for p in process_problems(auto, "f")] == ["sources[0].durable_name"]


def test_auto_with_the_embedded_database_is_one_process() -> None:
    """auto runs 1 process with the embedded database: nothing to share, nothing refused;
    an explicit number above 1 is refused for the database and for the MQTT source."""
    plain = {**MQTT}
    plain.pop("shared_group")
    embedded = {"database": {"url": "embedded"}, "sources": [plain]}
    auto = Config.model_validate({**embedded, "workers": {"processes": "auto"}})
    assert process_problems(auto, "f") == []
    two = Config.model_validate({**embedded, "workers": {"processes": 2}})
    problems = process_problems(two, "f")
    assert [p.key for p in problems] == ["workers.processes", "sources[0].shared_group"]


def test_a_stomp_topic_is_shared_through_one_subscription() -> None:
    """RabbitMQ: a durable_name is one queue all processes consume. ActiveMQ: a durable
    subscription is per connection (client-id), so only a queue (a virtual topic's) will do."""
    topic = {"name": "s", "type": "stomp", "destination": "/topic/x", "route": {"handler": "noop"}}
    durable = {**topic, "durable_name": "jobs"}
    assert process_problems(_config(workers={"processes": 2}, sources=[durable]), "f") == []
    activemq = {**durable, "flavor": "activemq"}
    problems = process_problems(_config(workers={"processes": 2}, sources=[activemq]), "f")
    assert [p.key for p in problems] == ["sources[0].destination"]
    assert "VirtualTopic" in problems[0].reason
    queue = {**activemq, "destination": "/queue/Consumer.jw.VirtualTopic.x"}
    assert process_problems(_config(workers={"processes": 2}, sources=[queue]), "f") == []


# An Arabic-Indic and a fullwidth 4 pass str.isdigit() and int() reads them as 4; a
# superscript 3 passes str.isdigit() and int() refuses it with a message of its own.
@pytest.mark.parametrize("value", [0, 1025, "many", 2.5, True, -1, "\u0664", "\uff14", "\u00b3"])
def test_a_process_count_is_a_whole_number_or_auto(value: Any) -> None:
    """One message naming the key, not pydantic's one per union member."""
    with pytest.raises(ConfigError) as caught:
        parse_config(f"workers: {{processes: {json.dumps(value)}}}\n", "jobwire.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "jobwire.yaml: workers.processes: must be a number of processes from 1 to 1024, "
        f"or auto (got {value!r})"
    ]


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), ("4", 4), ("'2'", 2)])
def test_a_process_count_as_written(text: str, value: Any) -> None:
    """A number, a quoted number (from ${VAR}) or auto."""
    assert parse_config(f"workers: {{processes: {text}}}\n", "f").workers.processes == value
