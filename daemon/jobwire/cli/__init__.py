"""The ``jobwire`` command: run, migrate, check-config, enqueue, jobs, stats, schedules,
queues, outbox."""

# Importing the command modules registers their commands on the group.
import jobwire.cli.commands
import jobwire.cli.jobs
import jobwire.cli.outbox
import jobwire.cli.queues
import jobwire.cli.schedules  # noqa: F401
from jobwire.cli.group import main

__all__ = ["main"]
