"""Intake: a source's deliveries become committed job rows, and only then are settled.

The order is the guarantee: a delivery is acknowledged only after the row holding it is
committed. When the store is out, the batch goes back to the broker (or, for a log, is
kept) and the source stops taking messages until the store answers; whatever a message
itself carries ends as a job row (failed, with its reason) and never holds the source.
"""

from jobwire.intake.counters import SourceCounters
from jobwire.intake.intake import Intake
from jobwire.intake.ports import Handoff, Settler

__all__ = ["Handoff", "Intake", "Settler", "SourceCounters"]
