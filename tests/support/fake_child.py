"""A stand-in for a supervisor's child daemon, run as a script: tells NOTIFY_SOCKET it is
ready, then either exits with a code after a pause (``crash SECONDS CODE``) or pings the
watchdog until SIGTERM and exits 0 (``serve``)."""

from __future__ import annotations

import os
import signal
import sys
import threading

from jobwire.sdnotify import sd_notify, watchdog_interval


def main(argv: list[str]) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sd_notify("READY=1")
    if argv[0] == "crash":
        stop.wait(float(argv[1]))
        return int(argv[2])
    interval = watchdog_interval(os.environ)
    while not stop.wait(interval / 2 if interval else 3600):
        sd_notify("WATCHDOG=1")
    sd_notify("STOPPING=1")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
