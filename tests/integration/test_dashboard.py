"""The dashboard's routes through aiohttp's test client: sign-in, roles, CSRF, CSP, pages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from jobwire.dashboard import site
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import ClaimRequest
from jobwire.store.postgres import PostgresStore, server_settings
from tests.support.dashboard import (
    ADMIN,
    READER,
    csrf_of,
    dashboard_api,
    dashboard_config,
    sign_in,
)
from tests.support.outbox import set_aside

pytestmark = pytest.mark.timeout(60)
Client = TestClient[Any, Any]
SOURCES = {
    "orders": {"state": "up", "last_error": None, "held": [], "waiting": 120, "held_back_s": 0.31},
    "telemetry": {"state": "down", "last_error": "connection refused", "held": []},
}
PAGES = ["/ui/", "/ui/jobs", "/ui/jobs?status=failed", "/ui/jobs/1", "/ui/audit"]


@pytest.fixture
async def client(pg_store: PostgresStore) -> AsyncIterator[Client]:
    async with TestClient(TestServer(dashboard_api(pg_store, sources=SOURCES).app())) as c:
        yield c


async def failed_job(store: PostgresStore, **spec: Any) -> int:
    """A job that ran once and failed for good (so it has an attempt to show)."""
    (job_id,) = await store.enqueue_many([JobSpec("noop", max_attempts=1, **spec)])
    assert job_id is not None
    queue = spec.get("queue", "default")
    (job,) = await store.claim(ClaimRequest({queue: 1}, 1, "w-test", 30))
    assert job.id == job_id
    outcome = Outcome(job.id, 1, JobStatus.FAILED, 0.25, error="ValueError: boom")
    assert await store.complete_many("w-test", [outcome]) == 1
    return job_id


async def test_without_a_session_pages_redirect_to_sign_in_and_actions_are_refused(
    client: Client, pg_store: PostgresStore
) -> None:
    job_id = await failed_job(pg_store)
    for path in PAGES:
        async with client.get(path, allow_redirects=False) as response:
            assert response.status == 303, path
            assert response.headers["Location"].startswith("/ui/login?next=%2Fui%2F"), path
    async with client.get(f"/ui/jobs/{job_id}/live", headers={"HX-Request": "true"}) as r:
        assert (r.status, r.headers["HX-Redirect"]) == (401, "/ui/login")
    for action in ("retry", "cancel"):
        async with client.post(f"/ui/jobs/{job_id}/{action}", data={"csrf": "x"}) as r:
            assert r.status == 403, action
    async with client.post("/ui/logout") as r:
        assert r.status == 403
    job = await pg_store.get(job_id)
    assert job is not None and job.status == JobStatus.FAILED
    assert await pg_store.list_audit() == []


async def test_every_response_carries_a_strict_csp_and_no_page_has_inline_code(
    client: Client, pg_store: PostgresStore
) -> None:
    await failed_job(pg_store)
    async with client.get("/ui/login") as r:
        login = await r.text()
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
    await sign_in(client, ADMIN)
    pages = {"/ui/login": login}
    for path in [*PAGES, "/ui/jobs/1/live", "/ui/jobs/999", "/ui/static/dashboard.css"]:
        async with client.get(path) as r:
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, path
            assert r.headers["X-Frame-Options"] == "DENY"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            pages[path] = await r.text()
    for path, html in pages.items():
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
        assert not re.search(r"\son[a-z]+=|\sstyle=|javascript:", html), path
    async with client.get("/ui/static/htmx.min.js") as r:
        assert r.status == 200 and "htmx" in (await r.text())[:200]


async def test_sign_in_needs_a_known_token_and_the_form_token(client: Client) -> None:
    async with client.get("/ui/login") as form:
        login_csrf = csrf_of(await form.text())
    data = {"csrf": login_csrf, "token": "not-the-token-0123456789"}
    async with client.post("/ui/login", data=data, allow_redirects=False) as r:
        assert r.status == 401 and "jobwire_session" not in r.cookies
        assert "not valid" in await r.text()
    data = {"csrf": "forged", "token": ADMIN}
    async with client.post("/ui/login", data=data, allow_redirects=False) as r:
        assert r.status == 403 and "jobwire_session" not in r.cookies
    async with client.get("/ui/login") as form:
        data = {"csrf": csrf_of(await form.text()), "token": READER, "next": "//evil/"}
    async with client.post("/ui/login", data=data, allow_redirects=False) as r:
        assert (r.status, r.headers["Location"]) == (303, "/ui/")  # no open redirect
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    async with client.get("/ui/") as r:
        assert r.status == 200 and 'class="role role-read"' in await r.text()


async def test_sign_in_goes_to_the_overview_when_next_holds_a_control_character(
    client: Client,
) -> None:
    """``next`` comes from a link anyone can send (/ui/login?next=...); a control character
    in the Location header made aiohttp drop the connection after the session was made."""
    for target in ("/ui/jobs\x7f", "/ui/\x1b[31m", "/ui/jobs\x00", "/ui/\tjobs"):
        async with client.get("/ui/login", params={"next": target}) as form:
            assert form.status == 200
            login_csrf = csrf_of(await form.text())
        data = {"csrf": login_csrf, "token": READER, "next": target}
        async with client.post("/ui/login", data=data, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui/"), repr(target)
        client.session.cookie_jar.clear()


async def test_a_read_only_session_sees_but_cannot_act(
    client: Client, pg_store: PostgresStore
) -> None:
    job_id = await failed_job(pg_store)
    csrf = await sign_in(client, READER)
    async with client.get(f"/ui/jobs/{job_id}") as r:
        page = await r.text()
        assert r.status == 200 and "ValueError: boom" in page
        assert 'id="retry"' not in page
    async with client.post(f"/ui/jobs/{job_id}/retry", data={"csrf": csrf}) as r:
        assert r.status == 403 and "read-only" in await r.text()
    job = await pg_store.get(job_id)
    assert job is not None and job.status == JobStatus.FAILED
    assert [a.action for a in await pg_store.list_audit()] == ["login"]


async def test_an_action_without_the_session_csrf_token_is_refused(
    client: Client, pg_store: PostgresStore
) -> None:
    job_id = await failed_job(pg_store)
    await sign_in(client, ADMIN)
    for data in ({}, {"csrf": "wrong"}):
        async with client.post(f"/ui/jobs/{job_id}/retry", data=data) as r:
            assert r.status == 403 and "CSRF" in await r.text()
    job = await pg_store.get(job_id)
    assert job is not None and job.status == JobStatus.FAILED


async def test_admin_retry_and_cancel_work_and_are_audited(
    client: Client, pg_store: PostgresStore
) -> None:
    job_id = await failed_job(pg_store)
    csrf = await sign_in(client, ADMIN)
    async with client.get(f"/ui/jobs/{job_id}") as r:
        assert 'id="retry"' in await r.text()
    retry = f"/ui/jobs/{job_id}/retry"
    async with client.post(retry, data={"csrf": csrf}, allow_redirects=False) as r:
        assert (r.status, r.headers["Location"]) == (303, f"/ui/jobs/{job_id}")
    job = await pg_store.get(job_id)
    assert job is not None and job.status == JobStatus.PENDING
    async with client.post(retry, data={"csrf": csrf}) as r:  # pending now: nothing to retry
        assert r.status == 409
    cancel = f"/ui/jobs/{job_id}/cancel"
    async with client.post(cancel, data={"csrf": csrf}, allow_redirects=False) as r:
        assert r.status == 303
    job = await pg_store.get(job_id)
    assert job is not None and job.status == JobStatus.CANCELLED
    rows = await pg_store.list_audit()
    assert [(a.action, a.role, a.target, a.count) for a in rows] == [
        ("cancel", "admin", f"job {job_id}", 1),
        ("retry", "admin", f"job {job_id}", 0),
        ("retry", "admin", f"job {job_id}", 1),
        ("login", "admin", None, 0),
    ]
    assert rows[2].detail == {"status_before": "failed"} and rows[2].actor.startswith("admin@")
    async with client.get("/ui/audit") as r:
        page = await r.text()
        assert page.count(f'href="/ui/jobs/{job_id}"') == 3
    async with client.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False) as r:
        assert r.status == 303
    async with client.get("/ui/", allow_redirects=False) as r:
        assert r.status == 303  # signed out: the old cookie is no session any more


async def test_jobs_filter_by_status_queue_handler_and_source_and_page_by_id(
    client: Client, pg_store: PostgresStore
) -> None:
    await pg_store.enqueue_many(
        [JobSpec("noop", queue="long", source="orders") for _ in range(60)]
        + [JobSpec("other", queue="long", failed_reason="bad body", source="orders")]
        + [JobSpec("noop", queue="short", failed_reason="bad body", source="telemetry")]
    )
    await sign_in(client, READER)

    async def shown(query: str) -> tuple[list[int], str]:
        async with client.get(f"/ui/jobs?{query}") as r:
            assert r.status == 200, await r.text()
            page = await r.text()
        return [int(i) for i in re.findall(r'<td class="num"><a href="/ui/jobs/(\d+)"', page)], page

    ids, page = await shown("status=failed&queue=long")
    assert len(ids) == 1 and 'id="total">1<' in page
    ids, _ = await shown("handler=noop&source=telemetry&queue=&status=")
    assert len(ids) == 1
    first, page = await shown("queue=long&status=pending")
    assert len(first) == 50 and first == sorted(first, reverse=True)
    assert 'id="total">60<' in page
    older = re.search(r'id="older" href="/ui/jobs\?([^"]+)"', page)
    assert older is not None
    second, page = await shown(older.group(1).replace("&amp;", "&"))
    assert len(second) == 10 and max(second) < min(first) and 'id="older"' not in page
    for bad in ("status=lost", "colour=red", "before_id=-1", "queue=a%00b"):
        async with client.get(f"/ui/jobs?{bad}") as r:
            assert r.status == 400, bad


async def test_the_job_page_shows_payload_body_provenance_attempts_and_parent(
    client: Client, pg_store: PostgresStore
) -> None:
    (parent,) = await pg_store.enqueue_many([JobSpec("noop", queue="parents")])
    headers = {"kafka-topic": "orders", "kafka-partition": "2", "kafka-offset": "41", "x": "y"}
    job_id = await failed_job(
        pg_store,
        payload={"order": 7, "items": ["a", "b"]},
        body=b"\x00\x01binary\xff",
        headers=headers,
        source="orders",
        parent_id=parent,
    )
    await sign_in(client, READER)
    async with client.get(f"/ui/jobs/{job_id}") as r:
        page = await r.text()
    assert "&#34;order&#34;: 7" in page  # pretty JSON, escaped
    assert "00 01 62 69 6e 61 72 79 ff" in page  # a hex preview of a binary body
    for text in ("kafka-partition", "41", "orders", f'href="/ui/jobs/{parent}"', "w-test"):
        assert text in page, text
    assert "ValueError: boom" in page and "250ms" in page  # the attempt, its duration


async def test_the_live_fragment_refreshes_on_changes_only_while_the_job_is_not_finished(
    client: Client, pg_store: PostgresStore
) -> None:
    (job_id,) = await pg_store.enqueue_many([JobSpec("noop")])
    await sign_in(client, READER)
    async with client.get(f"/ui/jobs/{job_id}/live") as r:
        fragment = await r.text()
    assert 'hx-trigger="jobwire-change from:body"' in fragment and "<html" not in fragment
    await pg_store.claim(ClaimRequest({"default": 1}, 1, "w", 30))
    await pg_store.set_progress(job_id, 40, "halfway")
    async with client.get(f"/ui/jobs/{job_id}/live") as r:
        fragment = await r.text()
    assert 'value="40"' in fragment and "halfway" in fragment
    await pg_store.complete_many("w", [Outcome(job_id, 1, JobStatus.SUCCEEDED, 0.1)])
    async with client.get(f"/ui/jobs/{job_id}/live") as r:
        fragment = await r.text()
    assert "hx-trigger" not in fragment and "succeeded" in fragment


async def test_the_overview_shows_queues_sources_instances_and_schedules(
    client: Client, pg_store: PostgresStore
) -> None:
    await pg_store.enqueue_many([JobSpec("noop", queue="mail") for _ in range(3)])
    await failed_job(pg_store, queue="long")
    await pg_store.register_worker("w-overview", "host-a", 1234, "0.1.0")
    next_run = datetime.now(UTC) + timedelta(minutes=5)
    await pg_store.sync_schedules([_schedule("nightly", next_run)])
    await sign_in(client, READER)
    async with client.get("/ui/") as r:
        page = await r.text()
    queues = page[page.index('id="queues"') : page.index('id="sources"')]
    # The name, how long its oldest ready job has waited, then 3 ready.
    late = r"<td class=\"num nowrap[a-z ]*\">[^<]+</td>"
    assert re.search(r"mail</a></td>\s*" + late + r"\s*<td class=\"num ?\"><a [^>]+>3<", queues)
    assert 'class="num bad"' in queues  # long's failure of the last hour stands out
    sources = page[page.index('id="sources"') : page.index('id="instances"')]
    assert "redeliveries" in sources and "lag" in sources
    assert re.search(r">120 \(0\.3s\)</td>", sources)  # held back for a free slot
    for text in ("telemetry", "connection refused", "w-overview", "host-a", "nightly"):
        assert text in page, text
    assert re.search(r">in [45]m<", page)  # the schedule's next run


async def test_the_dashboard_is_off_unless_enabled(pg_store: PostgresStore) -> None:
    api = dashboard_api(pg_store, config=dashboard_config(enabled=False))
    async with TestClient(TestServer(api.app())) as c:
        async with c.get("/ui/login") as r:
            assert r.status == 404
        async with c.get("/healthz") as r:
            assert r.status == 200


def _schedule(name: str, next_run_at: datetime) -> dict[str, Any]:
    return {
        "name": name,
        "cron": "0 3 * * *",
        "interval_s": None,
        "timezone": "UTC",
        "handler": "noop",
        "payload": None,
        "queue": "default",
        "priority": 0,
        "max_attempts": None,
        "enabled": True,
        "start_at": None,
        "end_at": None,
        "max_runs": None,
        "catch_up": "latest",
        "next_run_at": next_run_at,
    }


async def test_an_admin_pauses_and_resumes_a_queue_from_the_overview(
    client: Client, pg_store: PostgresStore
) -> None:
    """The overview shows each queue's state; an admin's Pause stops claims on every
    instance (the store's pause, as the CLI and API use) and is audited; a read-only session
    sees the state but no button, and its POST is refused. (That a paused queue starts
    nothing on any instance is tests/integration/test_flow_controls.py's.)"""
    await pg_store.enqueue([JobSpec("noop", queue="mail")])
    csrf = await sign_in(client, READER)
    async with client.get("/ui/") as r:
        page = await r.text()
        assert "mail" in page and "/ui/queues/mail/pause" not in page
    async with client.post("/ui/queues/mail/pause", data={"csrf": csrf}) as r:
        assert r.status == 403
    assert not [q for q in await pg_store.queue_states() if q.paused]

    client.session.cookie_jar.clear()
    csrf = await sign_in(client, ADMIN)
    async with client.get("/ui/") as r:
        assert "/ui/queues/mail/pause" in await r.text()
    async with client.post(
        "/ui/queues/mail/pause", data={"csrf": csrf}, allow_redirects=False
    ) as r:
        assert r.status == 303
    assert [(q.queue, q.paused) for q in await pg_store.queue_states()] == [("mail", True)]
    async with client.get("/ui/") as r:
        page = await r.text()
        assert "state-paused" in page and "/ui/queues/mail/resume" in page
    async with client.post("/ui/queues/mail/resume", data={"csrf": csrf}) as r:
        assert r.status == 200
    assert [(q.queue, q.paused) for q in await pg_store.queue_states()] == [("mail", False)]
    actions = [(a.action, a.target) for a in await pg_store.list_audit()]
    assert ("pause_queue", "mail") in actions and ("resume_queue", "mail") in actions


async def test_the_overview_s_forms_and_links_work_for_names_with_a_slash(
    client: Client, pg_store: PostgresStore
) -> None:
    """Queue and output names may hold "/" (an MQTT topic, "reports/daily"): each is one path
    segment in the dashboard's URLs, escaped whole, or its Pause button and its output's page
    answer 404."""
    await pg_store.enqueue([JobSpec("noop", queue="reports/daily")])
    await set_aside(pg_store, "events/eu", 1, "refused")
    csrf = await sign_in(client, ADMIN)
    async with client.get("/ui/") as r:
        page = await r.text()
    (pause,) = re.findall(r'action="(/ui/queues/reports[^"]+)"', page)
    (output, *_) = re.findall(r'href="(/ui/outputs/events[^"]+)"', page)
    async with client.post(pause, data={"csrf": csrf}, allow_redirects=False) as r:
        assert r.status == 303, (pause, r.status)
    assert [(q.queue, q.paused) for q in await pg_store.queue_states()] == [("reports/daily", True)]
    async with client.get(output) as r:
        assert r.status == 200, (output, r.status)
        page = await r.text()
    assert "Output events/eu" in page
    (resend, *_) = re.findall(r'action="(/ui/outputs/[^"]+/resend)"', page)
    async with client.post(resend, data={"csrf": csrf}, allow_redirects=False) as r:
        assert r.status == 303, (resend, r.status)
    assert (await pg_store.outbox_pending())["events/eu"].set_aside == 0


async def test_jobs_at_infinity_are_shown_not_crashed_on(
    client: Client, pg_store: PostgresStore, database_url: str
) -> None:
    """enqueue() takes run_at 'infinity' (a job parked until someone retimes it), and SQL
    writers may store '-infinity'; asyncpg reads them as naive datetime.max and min, which the
    age and timestamp filters could not subtract from now or convert: the job's page, and the
    whole jobs listing for a finished one, answered 500."""
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    try:
        parked = await conn.fetchval("SELECT enqueue('noop', '{}', run_at => 'infinity')")
    finally:
        await conn.close()
    failed = await failed_job(pg_store)
    conn = await asyncpg.connect(database_url, server_settings=server_settings("jobwire"))
    try:
        await conn.execute(
            "UPDATE jobs SET created_at = '-infinity', finished_at = 'infinity' WHERE id = $1",
            failed,
        )
    finally:
        await conn.close()
    await sign_in(client, READER)
    for path in (f"/ui/jobs/{parked}", f"/ui/jobs/{failed}", "/ui/jobs", "/ui/failures"):
        async with client.get(path) as r:
            page = await r.text()
            assert r.status == 200, (path, page[page.find("error-message") :][:200])
            assert "infinity" in page, path


async def test_an_admin_deletes_a_finished_job_but_not_a_waiting_one(
    client: Client, pg_store: PostgresStore
) -> None:
    failed = await failed_job(pg_store)
    (waiting,) = (await pg_store.enqueue([JobSpec("noop")])).ids
    csrf = await sign_in(client, READER)
    async with client.post(f"/ui/jobs/{failed}/delete", data={"csrf": csrf}) as r:
        assert r.status == 403
    assert await pg_store.get(failed) is not None

    client.session.cookie_jar.clear()
    csrf = await sign_in(client, ADMIN)
    async with client.get(f"/ui/jobs/{failed}") as r:
        assert 'id="delete"' in await r.text()
    async with client.get(f"/ui/jobs/{waiting}") as r:
        assert 'id="delete"' not in await r.text()
    async with client.post(f"/ui/jobs/{waiting}/delete", data={"csrf": csrf}) as r:
        assert r.status == 409
    async with client.post(
        f"/ui/jobs/{failed}/delete", data={"csrf": csrf}, allow_redirects=False
    ) as r:
        assert (r.status, r.headers["Location"]) == (303, "/ui/jobs")
    assert await pg_store.get(failed) is None and await pg_store.get(waiting) is not None
    audit = [(a.action, a.target, a.count) for a in await pg_store.list_audit()]
    assert ("delete", f"job {failed}", 1) in audit and ("delete", f"job {waiting}", 0) in audit


async def test_a_sign_in_form_that_never_ends_is_a_408_not_a_connection_held(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sign-in form takes requests from anyone: a chunked body that never ended held
    # its connection without end (found by a drill).
    monkeypatch.setattr(site, "FORM_READ_TIMEOUT", 1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(
            b"POST /ui/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n5\r\ntoken\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(10):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 408"), status
    finally:
        writer.close()
