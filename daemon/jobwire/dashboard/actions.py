"""The dashboard's actions: retry, cancel and delete a job (admin only), each written to the
audit."""

from __future__ import annotations

import structlog
from aiohttp import web

from jobwire.api_models import parse_id
from jobwire.dashboard.auth import Role, Session
from jobwire.dashboard.common import Context, PageError, see_other, signed_in
from jobwire.store.base import AuditEntry

log = structlog.get_logger("jobwire.dashboard")


class Actions:
    """POST handlers; the middleware has checked the session and its CSRF token."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _admin(self, request: web.Request) -> Session:
        session = signed_in(request)
        if session.role != Role.ADMIN:
            raise PageError(403, "this session is read-only: sign in with the admin token")
        return session

    async def _audit(
        self, session: Session, action: str, target: str, count: int, **detail: str
    ) -> None:
        entry = AuditEntry(session.actor, str(session.role), action, target, count, detail)
        # The log keeps a copy: a store outage must not hide who did what.
        log.info("dashboard_action", actor=entry.actor, action=action, target=target, count=count)
        await self.ctx.store.record_audit(entry)

    async def retry(self, request: web.Request) -> web.Response:
        """Run a failed or cancelled job again."""
        session = self._admin(request)
        job_id = parse_id(request.match_info["id"])
        job = await self.ctx.store.get(job_id)
        if job is None:
            raise PageError(404, f"no job {job_id}")
        retried = await self.ctx.store.retry([job_id])
        await self._audit(
            session, "retry", f"job {job_id}", len(retried), status_before=str(job.status)
        )
        if not retried:
            raise PageError(
                409, f"job {job_id} is {job.status}: only failed or cancelled jobs retry"
            )
        self.ctx.wake()
        return see_other(f"/ui/jobs/{job_id}")

    async def cancel(self, request: web.Request) -> web.Response:
        """Cancel a waiting job, or ask the worker running it to stop."""
        session = self._admin(request)
        job_id = parse_id(request.match_info["id"])
        job = await self.ctx.store.get(job_id)
        status = None if job is None else await self.ctx.store.cancel(job_id)
        if job is None or status is None:
            raise PageError(404, f"no job {job_id}")
        # A finished job is left as it was: the action is recorded, with nothing changed.
        changed = 1 if str(job.status) in ("pending", "retrying", "running") else 0
        await self._audit(
            session, "cancel", f"job {job_id}", changed, status_before=str(job.status)
        )
        return see_other(f"/ui/jobs/{job_id}")

    async def delete(self, request: web.Request) -> web.Response:
        """Delete a finished job and its attempts (a waiting or running one: cancel first)."""
        session = self._admin(request)
        job_id = parse_id(request.match_info["id"])
        job = await self.ctx.store.get(job_id)
        if job is None:
            raise PageError(404, f"no job {job_id}")
        deleted = await self.ctx.store.delete_ids([job_id])
        await self._audit(
            session, "delete", f"job {job_id}", len(deleted), status_before=str(job.status)
        )
        if not deleted:
            raise PageError(409, f"job {job_id} is {job.status}: only finished jobs are deleted")
        return see_other("/ui/jobs")
