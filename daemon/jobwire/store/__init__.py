"""Job storage: the JobStore interface and its PostgreSQL and in-memory implementations."""

from jobwire.store.base import ClaimRequest, DirectStart, JobStore, StoreUnavailable

__all__ = ["ClaimRequest", "DirectStart", "JobStore", "StoreUnavailable"]
