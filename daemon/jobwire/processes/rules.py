"""What a config with ``workers.processes`` above 1 must satisfy: every process is an instance."""

from __future__ import annotations

from jobwire.adapters.mqtt.config import MqttSource
from jobwire.adapters.stomp.config import StompSource
from jobwire.config import Config, ConfigProblem
from jobwire.processes.cores import resolve_processes


def process_problems(
    config: Config, file: str, processes: int | None = None
) -> list[ConfigProblem]:
    """Why these processes could not share the work the way separate instances do (none: ok).

    Judged on ``processes`` when given (the count resolved at start), else on the setting:
    ``auto`` is 1 with the embedded database and otherwise judged as several, whatever this
    host's cores, so that a config checks the same everywhere it may run. One process has
    nothing to share.
    """
    setting = config.workers.processes
    embedded = config.database.url == "embedded"
    if processes is not None:
        count = processes
    elif setting == "auto":
        count = 1 if embedded else max(2, resolve_processes(setting, embedded))
    else:
        count = int(setting)
    if count == 1:
        return []
    shown = str(setting)
    problems = []
    if embedded:
        problems.append(
            ConfigProblem(
                file,
                "workers.processes",
                f"{count} processes need a PostgreSQL server (database.url): the embedded "
                "database is one server started by one process (auto runs 1 with it)",
            )
        )
    for index, source in enumerate(config.sources):
        if isinstance(source, MqttSource) and source.shared_group is None:
            problems.append(
                ConfigProblem(
                    file,
                    f"sources[{index}].shared_group",
                    f"source {source.name!r}: with workers.processes {shown} each process "
                    "would get every message; set shared_group so that they split them",
                )
            )
        if isinstance(source, StompSource):
            problems += _stomp_problems(source, f"sources[{index}]", shown, file)
    return problems


def _stomp_problems(source: StompSource, key: str, shown: str, file: str) -> list[ConfigProblem]:
    """A STOMP topic splits between the processes only through one shared subscription."""
    if not source.destination.startswith("/topic/"):
        return []
    every = f"source {source.name!r}: with workers.processes {shown} each process would get"
    if source.flavor == "activemq":
        # ActiveMQ keys a durable subscription by client-id and name: each connection gets
        # a subscription (and a copy of every message) of its own.
        return [
            ConfigProblem(
                file,
                f"{key}.destination",
                f"{every} every message of the topic (an ActiveMQ durable subscription "
                "belongs to one connection); consume a queue, such as a virtual topic's "
                "/queue/Consumer.<name>.VirtualTopic.<topic>",
            )
        ]
    if source.durable_name is None:
        return [
            ConfigProblem(
                file,
                f"{key}.durable_name",
                f"{every} every message of the topic; consume a queue, or give a "
                "durable_name (one subscription queue the processes share)",
            )
        ]
    return []
