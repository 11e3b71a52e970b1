"""The garbage collector's settings for a long-running daemon.

CPython's cyclic collector runs a young collection every 700 net new container objects and
now and then a full one over every object in the process. A daemon moving thousands of
jobs a second allocates a batch's worth of rows, messages and futures at a time, so it ran
hundreds of young collections a second and full ones that walked every module, class and
config object it imported: a tenth or more of its CPU, and pauses of tens of milliseconds
in the event loop (bench/RESULTS.md has the figures). What start-up built (the modules, the
config, the handlers) lives as long as the process, so it is moved out of the collector's
sight (``gc.freeze``), and a young collection waits for more allocations: reference
counting still frees every object that is not in a cycle at once, and cyclic garbage made
later is collected as before, a little later. A frozen object is never collected, so the
freeze comes before the services start: no connection, job or future is frozen with it.

Measured on CPython 3.11's generational collector; 3.14's incremental collector gives the
thresholds other meanings, so these settings are to be measured again there.
"""

from __future__ import annotations

import gc

# Net new container objects between young collections (CPython's default is 700): more
# than a batch of a few hundred jobs allocates, so a batch in flight is not scanned over and
# over while it is alive. The older generations keep CPython's ratios.
YOUNG_THRESHOLD = 10_000


def settle_before_start() -> None:
    """Collect once, freeze what start-up built, and raise the young threshold; called by
    ``jobwire run`` once its config is loaded and its handlers imported, before its services
    start."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
