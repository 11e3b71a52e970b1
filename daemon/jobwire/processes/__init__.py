"""``workers.processes``: several daemon processes as one service (a supervisor and its
children), each child an instance like a separate ``jobwire run``."""

from jobwire.processes.child import ChildRole, SupervisorGone
from jobwire.processes.cores import available_cores, resolve_processes
from jobwire.processes.handover import ConfigHandover, HandoverMissing, receive_config
from jobwire.processes.rules import process_problems
from jobwire.processes.supervisor import Supervisor

__all__ = [
    "ChildRole",
    "ConfigHandover",
    "HandoverMissing",
    "Supervisor",
    "SupervisorGone",
    "available_cores",
    "process_problems",
    "receive_config",
    "resolve_processes",
]
