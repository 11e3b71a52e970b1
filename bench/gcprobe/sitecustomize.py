"""Loaded by every Python process started with this directory on PYTHONPATH (bench/gc_pauses.py
sets it for the daemons it starts): in a ``jobwire run`` process, times every garbage
collection from jobwire's call to gc.freeze (its config loaded, its handlers imported, just
before its services start) and appends a JSON summary to the file named by JOBWIRE_GC_PROBE
at exit. With JOBWIRE_GC_PROBE_DEFAULTS set, it keeps CPython's own collector settings:
jobwire's calls to gc.freeze and gc.set_threshold do nothing. A ``workers.processes``
supervisor matches too and never freezes, so its line would cover its whole life: the
scenarios here run one process."""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import time
from typing import Any

_OUT = os.environ.get("JOBWIRE_GC_PROBE")

if _OUT and sys.argv[1:2] == ["run"]:  # python -m jobwire run (argv[0] is "-m" here)
    _state: dict[str, Any] = {"seconds": 0.0, "longest": 0.0, "counts": [0, 0, 0]}
    _started = [0.0]

    def _timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - _started[0]
        _state["seconds"] += pause
        _state["longest"] = max(_state["longest"], pause)
        _state["counts"][info["generation"]] += 1

    _freeze, _set_threshold = gc.freeze, gc.set_threshold
    defaults = bool(os.environ.get("JOBWIRE_GC_PROBE_DEFAULTS"))

    def _start_over() -> None:
        # jobwire calls gc.freeze once, before its services start: count from there, not
        # the imports' collections.
        _state.update(seconds=0.0, longest=0.0, counts=[0, 0, 0], cpu0=time.process_time())
        if not defaults:
            _freeze()

    def _threshold(*values: int) -> None:
        if not defaults:
            _set_threshold(*values)

    gc.freeze = _start_over
    gc.set_threshold = _threshold  # type: ignore[assignment]
    gc.callbacks.append(_timed)

    @atexit.register
    def _report() -> None:
        cpu = time.process_time() - _state.get("cpu0", 0.0)
        with open(str(_OUT), "a") as out:
            out.write(json.dumps({**_state, "cpu": cpu, "pid": os.getpid()}) + "\n")
