"""The dashboard in a real browser (Debian's chromium driven by Playwright): sign in, filter
the failed jobs, open one, retry it, and watch it succeed without reloading the page.

Screenshots of each page go to bench/results/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Config
from jobwire.handlers import JobContext
from jobwire.models import JobSpec
from jobwire.store.postgres import PostgresStore
from tests.support import hostile as h
from tests.support.dashboard import ADMIN, READER
from tests.support.inprocess import running_daemon
from tests.support.outbox import set_aside
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
CHROMIUM = os.environ.get("JOBWIRE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parents[2] / "bench" / "results"

async_api = pytest.importorskip("playwright.async_api")


async def flaky(payload: Any, ctx: JobContext) -> dict[str, str]:
    """Fails its first attempt; a later one reports progress for a while, then succeeds."""
    if ctx.attempt == 1:
        raise RuntimeError("upstream answered 503 (first attempt fails on purpose)")
    for percent in (25, 50, 75):
        await ctx.progress(percent, f"step {percent // 25} of 3")
        await asyncio.sleep(1.0)
    return {"order": payload["order"], "charged": True}


def config(database_url: str) -> Config:
    return Config.model_validate(
        {
            "database": {"url": database_url},
            "workers": {"poll_interval": "200ms"},
            "queues": {"default": {}, "payments": {}},
            "handlers": {"flaky": "tests.e2e.test_dashboard_browser:flaky"},
            "schedules": [{"name": "nightly-report", "cron": "0 3 * * *", "handler": "noop"}],
            "http": {
                "listen": "127.0.0.1:0",
                "admin_token": ADMIN,
                "dashboard": {"enabled": True, "read_token": READER},
            },
        }
    )


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no chromium at {CHROMIUM}")
async def test_sign_in_filter_open_retry_and_watch_it_succeed(database_url: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with running_daemon(config(database_url)) as daemon:
        assert daemon.http is not None
        base = f"http://127.0.0.1:{daemon.http.port}"
        store = await PostgresStore.connect(database_url, "jobwire", min_size=1, max_size=2)
        try:
            job_id = await seed(store)
            async with async_api.async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    await walk(browser, base, job_id)
                finally:
                    await browser.close()
        finally:
            await store.close()


async def seed(store: PostgresStore) -> int:
    """A few jobs of each kind; returns the one that fails once (and only has one attempt)."""
    headers = {"kafka-topic": "payments", "kafka-partition": "3", "kafka-offset": "1207"}
    (job_id,) = await store.enqueue_many(
        [
            JobSpec(
                "flaky",
                {"order": 4711, "amount": "19.90"},
                queue="payments",
                max_attempts=1,
                headers=headers,
                source="payments-kafka",
            )
        ]
    )
    await store.enqueue_many([JobSpec("noop", {"n": i}) for i in range(5)])
    await store.enqueue_many(
        [JobSpec("fail", {"message": "no such customer"}, max_attempts=1) for _ in range(2)]
    )
    assert job_id is not None

    async def settled() -> bool:
        jobs = await store.list_jobs(None, None, 20)
        return len(jobs) == 8 and all(str(j.status) in ("succeeded", "failed") for j in jobs)

    await wait_for(settled, timeout=30, what="seeded jobs finished")
    return job_id


async def walk(browser: Any, base: str, job_id: int) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    violations: list[str] = []
    page.on(
        "console",
        lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
    )
    # No session: the failed-jobs link leads to the sign-in, and back after it.
    await page.goto(f"{base}/ui/jobs?status=failed")
    assert "/ui/login" in page.url
    await page.screenshot(path=SHOTS / "dashboard-login.png")
    await page.fill("#token", ADMIN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/ui/jobs?status=failed")

    # Filter with the form: failed jobs of the payments queue.
    await page.goto(f"{base}/ui/jobs")
    await page.select_option("#f-status", "failed")
    await page.fill("#f-queue", "payments")
    await page.click("form.filters button")
    await page.wait_for_url("**/ui/jobs?status=failed&queue=payments*")
    rows = page.locator("#jobs tbody tr")
    assert await rows.count() == 1
    await page.screenshot(path=SHOTS / "dashboard-jobs-failed.png", full_page=True)

    await page.click(f'#jobs a[href="/ui/jobs/{job_id}"]')
    await page.wait_for_url(f"{base}/ui/jobs/{job_id}")
    assert await page.text_content("#job-status") == "failed"
    assert "1207" in (await page.text_content("#provenance") or "")
    await page.screenshot(path=SHOTS / "dashboard-job-failed.png", full_page=True)

    await page.click("#retry")
    await page.wait_for_url(f"{base}/ui/jobs/{job_id}")
    # A mark on this document: a reload would lose it, htmx swaps keep it.
    await page.evaluate("window.jobwireMark = 'same page'")
    status = page.locator("#job-status")
    await async_api.expect(status).to_have_text("running", timeout=15_000)
    await page.wait_for_selector("#job-progress", timeout=10_000)
    await page.screenshot(path=SHOTS / "dashboard-job-running.png", full_page=True)
    await async_api.expect(status).to_have_text("succeeded", timeout=20_000)
    assert await page.evaluate("window.jobwireMark") == "same page"
    assert "charged" in (await page.text_content("#job-result") or "")
    await page.screenshot(path=SHOTS / "dashboard-job-succeeded.png", full_page=True)

    # The failures page: the two "fail" jobs are one group, with its actions.
    await page.goto(f"{base}/ui/failures")
    groups = page.locator("#failures tr.group")
    assert await groups.count() == 1
    assert "2" in (await groups.first.locator("td.big-count").text_content() or "")
    await page.screenshot(path=SHOTS / "dashboard-failures.png", full_page=True)
    await groups.first.locator("button", has_text="Retry").click()  # a POST: it freezes
    await page.wait_for_url("**/ui/bulk/*")
    assert await page.text_content("#bulk-count") == "2"
    await page.screenshot(path=SHOTS / "dashboard-bulk-confirm.png", full_page=True)
    await page.click("#bulk-start")
    await async_api.expect(page.locator("#bulk-state")).to_have_text("done", timeout=15_000)
    await page.screenshot(path=SHOTS / "dashboard-bulk-done.png", full_page=True)

    await page.goto(f"{base}/ui/")
    await page.screenshot(path=SHOTS / "dashboard-overview.png", full_page=True)
    await page.goto(f"{base}/ui/audit")
    assert "retry" in (await page.text_content("#audit") or "")
    await page.screenshot(path=SHOTS / "dashboard-audit.png", full_page=True)
    assert violations == []


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no chromium at {CHROMIUM}")
async def test_set_aside_messages_sent_again_and_discarded_from_the_page(
    database_url: str,
) -> None:
    """An AMQP output whose two messages were set aside: the overview shows them, the
    output's page lists them; one is sent again and arrives, the other is discarded once the
    box is ticked; both actions are in the audit."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    queue = f"jw-e2e-out-{uuid.uuid4().hex[:8]}"
    h.declare_amqp_queue(queue)
    store = await PostgresStore.connect(database_url, "jobwire", min_size=1, max_size=2)
    try:
        ids = await set_aside(store, "billing", 2, "NOT_FOUND - no exchange 'billing' in vhost '/'")
        settings = config(database_url).model_dump(by_alias=True, exclude_unset=True)
        settings["outputs"] = {"billing": {"type": "amqp", "url": h.AMQP_URL, "routing_key": queue}}
        async with running_daemon(Config.model_validate(settings)) as daemon:
            assert daemon.http is not None
            base = f"http://127.0.0.1:{daemon.http.port}"
            async with async_api.async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    await walk_outputs(browser, base, queue, ids)
                finally:
                    await browser.close()
        audit = [a.action for a in await store.list_audit() if a.action.startswith("outbox")]
        assert audit == ["outbox_discard", "outbox_resend"]
    finally:
        await store.close()
        h.delete_amqp_queue(queue)


async def walk_outputs(browser: Any, base: str, queue: str, ids: list[int]) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    await page.goto(f"{base}/ui/login")
    await page.fill("#token", ADMIN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/ui/")
    row = page.locator("#outputs tbody tr", has_text="billing")
    assert "2" in (await row.locator("td").nth(4).text_content() or "")
    await page.screenshot(path=SHOTS / "dashboard-outputs.png", full_page=True)

    await row.locator("a").first.click()
    await page.wait_for_url(f"{base}/ui/outputs/billing")
    assert await page.locator("#set-aside tbody tr").count() == 2
    assert "NOT_FOUND" in (await page.text_content("#set-aside") or "")
    await page.screenshot(path=SHOTS / "dashboard-output-set-aside.png", full_page=True)

    await page.locator(f"#m-{ids[0]} button", has_text="Send again").click()
    await page.wait_for_url(f"{base}/ui/outputs/billing")
    assert await page.locator("#set-aside tbody tr").count() == 1

    async def arrived() -> bool:
        return await asyncio.to_thread(h.amqp_queue_depth, queue) == 1

    await wait_for(arrived, timeout=20, what="the message sent again arrives")

    # Discarding asks for the box first: without it the browser does not submit.
    await page.click("#discard-all")
    assert await page.locator("#set-aside tbody tr").count() == 1
    await page.check("#discard-confirm")
    await page.click("#discard-all")
    await page.wait_for_url(f"{base}/ui/outputs/billing")
    assert "No message of this output is set aside" in (await page.content())
    await page.screenshot(path=SHOTS / "dashboard-output-cleared.png", full_page=True)
