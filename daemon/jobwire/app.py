"""Wiring and lifecycle: the one place that builds the services and starts them in order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

from jobwire import __version__
from jobwire.adapters import build_adapter
from jobwire.adapters.base import Adapter
from jobwire.adapters.http.adapter import HttpAdapter, JobLookup
from jobwire.adapters.registry import build_publisher, reply_outputs
from jobwire.backoff import Backoff
from jobwire.builtins.service import BuiltinHandlers
from jobwire.config import Config, SourceBase
from jobwire.flow import BacklogGate
from jobwire.handlers import HandlerRegistry
from jobwire.intake import Intake
from jobwire.maintenance import Maintenance
from jobwire.metrics import Metrics
from jobwire.outbox import OutboxRelay, build_relays
from jobwire.redaction import mask_url, redact_data, remember, secret_values
from jobwire.reply import reply_output_name
from jobwire.routing import Router
from jobwire.scheduler import Scheduler
from jobwire.sdnotify import sd_notify as _sd_notify
from jobwire.sdnotify import watchdog_interval as _watchdog_interval
from jobwire.services import LoopService, Service, ServiceGroup, cancel_until_done
from jobwire.store.base import JobStore, StoreRefused, StoreUnavailable
from jobwire.store.embedded import EmbeddedPostgres
from jobwire.store.migrate import check_schema_at
from jobwire.store.postgres import PostgresStore, migrate
from jobwire.web import HttpApi
from jobwire.worker import WorkerPool

log = structlog.get_logger("jobwire.app")
T = TypeVar("T")


class ListenError(Exception):
    """A configured address could not be bound (taken, not local, not allowed)."""

    def __init__(self, key: str, address: str, reason: str) -> None:
        super().__init__(f"{key} {address}: {reason}")
        self.key = key
        self.address = address
        self.reason = reason


def _bind_reason(exc: OSError) -> str:
    """``address already in use`` rather than the loop's long wrapped message."""
    # web.py re-raises the loop's OSError with its own text; the errno is on the cause.
    for err in (exc, exc.__cause__):
        if isinstance(err, socket.gaierror):
            return str(err.strerror or err).lower()
        if isinstance(err, OSError) and err.errno and err.errno > 0:
            return os.strerror(err.errno).lower()
    return str(exc)


def with_database_url(config: Config, url: str | None) -> Config:
    """The config with ``database.url`` replaced (the CLI's ``--database-url``)."""
    if not url:
        return config
    database = config.database.model_copy(update={"url": url})
    return config.model_copy(update={"database": database})


async def retry_unavailable(attempt: Callable[[], Awaitable[T]], wait: float) -> T:
    """Run ``attempt`` until the database answers, for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    backoff = Backoff(initial=0.2, maximum=5.0, jitter="none")
    while True:
        try:
            return await attempt()
        except StoreRefused:
            raise
        except (TimeoutError, OSError, StoreUnavailable) as exc:
            delay = backoff.next()
            if time.monotonic() + delay > deadline:
                raise StoreUnavailable(f"database not reachable: {exc}") from exc
            log.warning("database_waiting", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)


# While migrating, systemd's start timeout is pushed this far ahead, again and again: a
# migration that reads a large table must not be killed as a hung start, and a truly hung
# one still is, this long after its last sign of life.
_EXTEND_TIMEOUT = 90.0
_EXTEND_EVERY = 30.0


async def migrate_schema(
    dsn: str,
    schema: str,
    wait: float,
    on_applied: Callable[[str, float], None] | None = None,
) -> list[str]:
    """Migrate, telling systemd which migration runs and keeping its start timeout ahead."""
    extend = f"EXTEND_TIMEOUT_USEC={int(_EXTEND_TIMEOUT * 1_000_000)}"

    def waiting(holders: list[int]) -> None:
        # Said before the wait, which may be long: a migration of another instance, or the
        # server session of a killed one whose statement still waits for a lock.
        log.warning("migration_waiting", schema=schema, holder_pids=holders)
        _sd_notify(f"STATUS=waiting for another migrator of schema {schema}\n{extend}")

    def applying(label: str) -> None:
        log.info("migration_applying", schema=schema, migration=label)
        _sd_notify(f"STATUS=applying migration {label}\n{extend}")

    async def keep_extending() -> None:
        while True:
            await asyncio.sleep(_EXTEND_EVERY)
            _sd_notify(extend)

    _sd_notify(f"STATUS=checking schema {schema} migrations\n{extend}")
    extender = asyncio.create_task(keep_extending(), name="jobwire-migrate-extend")
    try:
        return await retry_unavailable(
            lambda: migrate(
                dsn, schema, on_applying=applying, on_applied=on_applied, on_waiting=waiting
            ),
            wait,
        )
    finally:
        extender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await extender
        _sd_notify("STATUS=starting")


@contextlib.asynccontextmanager
async def database_dsn(config: Config) -> AsyncIterator[str]:
    """The configured database's URL; the embedded server runs for as long as it is used."""
    db = config.database
    embedded = EmbeddedPostgres(db.data_dir) if db.url == "embedded" else None
    try:
        # Inside the try: a stop during the server's start still stops it.
        dsn = await embedded.start() if embedded else db.url
        yield dsn
    finally:
        if embedded:
            await embedded.stop()


@contextlib.asynccontextmanager
async def open_store(
    config: Config, *, apply_migrations: bool | None = None, wait: float = 30.0
) -> AsyncIterator[PostgresStore]:
    """Start the embedded database if configured, migrate or check the schema, and yield a
    connected store.

    ``apply_migrations`` None: as ``database.migrate`` says. Without migrating, a schema this
    jobwire does not match (missing, behind or ahead) raises SchemaMismatch, changing nothing.
    """
    db = config.database
    migrating = db.migrate if apply_migrations is None else apply_migrations
    async with database_dsn(config) as dsn:
        if migrating:
            applied = await migrate_schema(dsn, db.db_schema, wait)
            if applied:
                log.info("migrations_applied", schema=db.db_schema, migrations=applied)
        else:
            await retry_unavailable(lambda: check_schema_at(dsn, db.db_schema), wait)
        store = await PostgresStore.connect(
            dsn,
            db.db_schema,
            min_size=db.pool.min,
            max_size=db.pool.max,
            command_timeout=db.command_timeout,
            default_max_attempts=config.retry.max_attempts,
        )
        try:
            yield store
        finally:
            await store.close()


def _describe_relay(relay: OutboxRelay) -> dict[str, Any]:
    """A relay's state and counters, with its publisher's ``dropped`` where it counts them
    (a reply publisher: replies no one could take)."""
    described = relay.describe()
    dropped = getattr(relay.publisher, "dropped", None)
    if isinstance(dropped, int):
        described["dropped"] = dropped
    return described


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# How often the stop signals' handlers are checked: a handler may replace them.
_SIGNAL_CHECK = 1.0


def _start_watchdog() -> asyncio.Task[None] | None:
    """Ping systemd's watchdog (WATCHDOG=1) at half its interval, while the loop is alive."""
    watchdog = _watchdog_interval()
    if watchdog is None:
        return None
    interval = watchdog / 2

    async def ping() -> None:
        while True:
            _sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    return asyncio.create_task(ping(), name="jobwire-watchdog")


class Source:
    """One configured source at run time: its adapter, its intake and their tasks."""

    def __init__(self, cfg: SourceBase, adapter: Adapter, intake: Intake) -> None:
        self.cfg = cfg
        self.adapter = adapter
        self.intake = intake
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start consuming and storing."""
        self._tasks = [
            asyncio.create_task(self.intake.run(), name=f"jobwire-intake-{self.cfg.name}"),
            asyncio.create_task(
                self.adapter.run(self.intake.submit), name=f"jobwire-source-{self.cfg.name}"
            ),
        ]

    async def stop(self, timeout: float) -> None:
        """Stop consuming, store and settle what was taken, then disconnect."""
        await self.adapter.pause()
        await self.intake.drain(timeout)
        await cancel_until_done(self._tasks)

    def describe(self) -> dict[str, Any]:
        """State and counters, for stats."""
        return {
            **self.adapter.describe(),
            **self.intake.counters.as_dict(),
            "held": self.intake.held,
            "waiting": self.intake.waiting,
            "held_back_s": round(self.intake.held_back_for(), 3),
        }


class Sources:
    """Every source as one service: started together, stopped together."""

    name = "sources"

    def __init__(self, sources: Sequence[Source], stop_timeout: float = 10.0) -> None:
        self.sources = list(sources)
        self.stop_timeout = stop_timeout

    async def start(self) -> None:
        """Start consuming from every source."""
        for source in self.sources:
            source.start()

    async def stop(self) -> None:
        """Stop every source at once, each storing and settling what it took."""
        await asyncio.gather(*(s.stop(timeout=self.stop_timeout) for s in self.sources))


class HttpService:
    """The HTTP server as a service; a taken port is a ListenError, not a crash."""

    name = "http"

    def __init__(self, api: HttpApi, listen: str) -> None:
        self.api = api
        self.listen = listen

    async def start(self) -> None:
        """Bind and serve."""
        try:
            await self.api.start()
        except OSError as exc:
            # An operator's mistake, not a crash: the CLI prints one line, exits 2.
            raise ListenError("http.listen", self.listen, _bind_reason(exc)) from exc

    async def stop(self) -> None:
        """Stop serving."""
        await self.api.stop()


def build_sources(
    config: Config,
    registry: HandlerRegistry,
    store: JobStore,
    pool: WorkerPool,
    on_stored: Callable[[int], None] | None = None,
) -> list[Source]:
    """Adapter, router and intake for every configured source."""
    sources = []
    for cfg in config.sources:
        adapter = build_adapter(cfg, store.stored_offsets)
        router = Router(cfg, registry.names(), adapter.default_dedup)
        intake = Intake(cfg, adapter, router, store, pool, on_stored=on_stored)
        sources.append(Source(cfg, adapter, intake))
    return sources


def mount_webhooks(sources: Sequence[Source], http: HttpApi | None, lookup: JobLookup) -> None:
    """Serve each webhook source (type: http) on the daemon's HTTP server, with the router
    its intake uses and a read-back of the stored job's id."""
    for source in sources:
        if not isinstance(source.adapter, HttpAdapter):
            continue
        if http is None:
            # check-config says so first (jobwire.adapters.http.config); this is the net.
            raise ListenError(
                "http.enabled", "false", f"source {source.cfg.name} (type http) needs it on"
            )
        source.adapter.attach(source.intake.router, lookup)
        http.webhooks[source.adapter.path] = source.adapter


def ready_line(config: Config, http_port: int | None = None) -> str:
    """The one line ``jobwire run`` prints on a terminal once ready: where the database is,
    what it consumes, where its HTTP server is (the URL's password masked).

    ``http_port``: the port actually bound (``http.listen`` may say 0), if known.
    """
    db = config.database
    if db.url == "embedded":
        database = f"database embedded under {db.data_dir}"
    else:
        database = f"database {mask_url(db.url)}"
    database += f" (schema {db.db_schema})"
    if config.sources:
        kinds = ", ".join(f"{s.name} ({getattr(s, 'type', '?')})" for s in config.sources)
        consuming = f"consuming {kinds}"
    else:
        consuming = "no sources"
    http = config.http
    if not http.enabled:
        served = "no HTTP server"
    else:
        host, _, port = http.listen.rpartition(":")
        shown_port = http_port if http_port else int(port)
        wildcard = host in ("0.0.0.0", "::", "[::]", "*")
        served = f"http://{'127.0.0.1' if wildcard else host}:{shown_port}"
        notes = [f"all interfaces, port {shown_port}"] if wildcard else []
        if http.dashboard.enabled:
            notes.append("dashboard /ui/")
        if notes:
            served += f" ({'; '.join(notes)})"
    return f"jobwire ready: {database}, {consuming}; {served}"


def _announce_ready(config: Config, http_port: int | None) -> None:
    """Print ``ready_line`` for a person at a terminal; JSON logs or a pipe get none."""
    if config.logging.format == "json" or not sys.stdout.isatty():
        return
    print(ready_line(config, http_port), flush=True)


class Daemon:
    """``jobwire run``: the store, the worker pool, and a clean stop on request."""

    def __init__(self, config: Config, registry: HandlerRegistry) -> None:
        self.config = config
        self.registry = registry
        self.stop_requested = asyncio.Event()
        self.ready = asyncio.Event()  # set once everything is started (READY=1)
        self.pool: WorkerPool | None = None
        self.sources: list[Source] = []
        self.metrics: Metrics | None = None
        self.relays: list[OutboxRelay] = []
        self.http: HttpApi | None = None
        self._starting = True  # until every service has started: a stop cancels the start
        self._signal_guard: asyncio.Task[None] | None = None  # set with the signal handlers
        # Log lines, /readyz and the workers table mask these wherever they appear.
        remember(secret_values(config))

    def describe_sources(self) -> dict[str, dict[str, Any]]:
        """Each source's state, last error and counters, by name (secrets masked)."""
        # A broker client's error may quote the URL it was given, password and all; this
        # feeds /readyz, /api/v1/sources and the state published for ``jobwire stats``.
        described: dict[str, dict[str, Any]] = redact_data(
            {s.cfg.name: s.describe() for s in self.sources}
        )
        return described

    def request_stop(self, reason: str = "requested") -> None:
        """Begin a graceful stop (SIGTERM/SIGINT/SIGHUP or a test)."""
        if not self.stop_requested.is_set():
            log.info("stop_requested", reason=reason)
            self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT and SIGHUP start a graceful stop; installed only by the entry point."""
        loop = asyncio.get_running_loop()
        # SIGHUP too: its default action kills the process on the spot (exit 129), leaving the
        # running jobs leased and this instance's workers row behind. There is no config
        # reload to give it instead, and a closed terminal or ssh session sends it.
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        installed = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
        self._signal_guard = loop.create_task(
            self._guard_signals(installed), name="jobwire-signal-guard"
        )

    async def _guard_signals(self, installed: dict[signal.Signals, Any]) -> None:
        """Put back the stop signals' handlers a handler replaced (signal.signal()), and say
        so: with SIGTERM ignored the daemon never stopped, with its default it died on the
        spot, its jobs left running to their leases."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_SIGNAL_CHECK)
            for sig, ours in installed.items():
                now = signal.getsignal(sig)
                if now is ours:
                    continue
                recent = self.pool.state.started_lately if self.pool is not None else ()
                log.error(
                    "signal_handler_replaced",
                    signal=sig.name,
                    handler=repr(now),
                    handlers=sorted(set(recent)),
                    note="restored; a handler must not call signal.signal()",
                )
                loop.add_signal_handler(sig, self.request_stop, sig.name)
                installed[sig] = signal.getsignal(sig)

    def _wake_relays(self, outputs: set[str]) -> None:
        """Outbox rows of these outputs were written: their relays send them now."""
        for relay in self.relays:
            if relay.output in outputs:
                relay.wake()

    def _pool_figures(self) -> dict[str, int]:
        return self.pool.figures() if self.pool is not None else {}

    def build(self, store: PostgresStore) -> list[Service]:
        """Every service, in start order; each gets what it needs at construction.

        Stopped in reverse: the sources first, so no delivery is left taken but unsettled,
        then the leader's loops and the gate, then the pool, then the HTTP server.
        """
        config = self.config
        # The implicit reply:<source> outputs of the sources with reply: true.
        replies = reply_outputs(config)
        self.metrics = Metrics(
            store,
            self._pool_figures,
            self.describe_sources,
            store.pool_usage,
            backlog_cap=config.workers.max_backlog or 1_000_000,
            queues=config.queue_names(),
            handlers=self.registry,
        )
        self.pool = WorkerPool(
            store,
            self.registry,
            config,
            on_outcome=self.metrics.observe,
            on_start=self.metrics.observe_start,
            # Only with outputs to relay: every other job is then spared the bookkeeping.
            on_written=self._wake_relays if config.outputs or replies else None,
            replies={
                s.name: reply_output_name(s.name)
                for s in config.sources
                if reply_output_name(s.name) in replies
            },
            extra_state=lambda: {
                "sources": self.describe_sources(),
                # A broker client's error may quote its URL, password and all.
                "outputs": redact_data({r.output: _describe_relay(r) for r in self.relays}),
            },
        )
        services: list[Service] = []
        if config.http.enabled:
            self.http = HttpApi(
                config.http,
                store,
                self.metrics,
                self.describe_sources,
                self.pool.wake,
                frozenset(s.name for s in config.sources if s.required),
                allowed_handlers=frozenset(self.registry.names()),
                schema=config.database.db_schema,
                store_trouble=self.pool.store_trouble,
            )
            # First: a taken port fails before anything runs.
            services.append(HttpService(self.http, config.http.listen))
        if self.registry.builtin_kinds:
            # Before the pool: a built-in must be open before the first job can reach it.
            builtins = BuiltinHandlers(
                config.builtins, store, set(self.registry.builtin_kinds.values())
            )
            self.registry.bind_builtins(builtins.handler)
            services.append(builtins)
        # Before the pool, so stopped after it: outcomes written at the end are still sent.
        # With the implicit reply:<source> outputs, relayed like any other (metrics, stats,
        # the dashboard), though no handler may publish to them.
        outputs = {**config.outputs, **replies}
        self.relays = build_relays(
            config.model_copy(update={"outputs": outputs}), store, build_publisher
        )
        services.extend(self.relays)
        self.registry.outputs = frozenset(config.outputs)
        self.metrics.outputs = tuple(sorted(outputs))
        self.metrics.outbox_pending = store.outbox_pending if outputs else None
        services.append(self.pool)
        gate = None
        high = config.workers.max_backlog
        if high is not None and config.sources:
            low = config.workers.backlog_resume
            gate = BacklogGate(
                store,
                lambda: [s.intake for s in self.sources],
                high,
                int(high * 0.8) if low is None else low,
            )
            services.append(gate)
        self.sources = build_sources(
            config,
            self.registry,
            store,
            self.pool,
            on_stored=gate.note_stored if gate is not None else None,
        )
        mount_webhooks(self.sources, self.http, store)
        # Every instance may lead the scheduler: schedules added at run time (CLI, API) and
        # other instances' config schedules fire even where this config names none.
        scheduler = Scheduler(store, config, self.pool.wake, schema=config.database.db_schema)
        # Without schedules: leaves the table as other instances set it.
        sync = scheduler.sync if config.schedules else None
        services.append(LoopService("scheduler", scheduler.run, prepare=sync))
        if config.retention.enabled:
            services.append(Maintenance(store, config.retention, schema=config.database.db_schema))
        services.append(Sources(self.sources))
        return services

    async def run(self) -> None:
        """Run until a stop is requested, then drain and return.

        A stop requested during start-up (waiting for the database or the migration lock,
        migrating, starting services) abandons the start: what had started is stopped, and
        this returns as after any requested stop, without READY=1.
        """
        log.info("daemon_starting", version=__version__, pid=os.getpid())
        self._starting = True
        life = asyncio.create_task(self._live(), name="jobwire-daemon")
        stop = asyncio.create_task(self.stop_requested.wait(), name="jobwire-stop-request")
        try:
            await asyncio.wait({life, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not life.done() and self._starting:
                # Cancelled where it waits: the context managers and ServiceGroup.start undo
                # what had started. Waiting for the start to finish could take as long as the
                # database stays away or another instance holds the migration lock.
                life.cancel()
            await asyncio.wait({life})
        except asyncio.CancelledError:
            life.cancel()
            await asyncio.wait({life})
            raise
        finally:
            stop.cancel()
            if self._signal_guard is not None:
                self._signal_guard.cancel()
        if life.cancelled():
            log.info("daemon_start_abandoned")
            return
        life.result()

    async def _live(self) -> None:
        """Start everything, announce readiness, wait for a stop, then drain."""
        async with open_store(self.config) as store:
            await store.publish_default_max_attempts(self.config.retry.max_attempts)
            services = ServiceGroup(self.build(store))
            watchdog = None
            try:
                await services.start()
                # No await from here to the wait: a stop now is a drain, never a cancel.
                self._starting = False
                if not self.stop_requested.is_set():
                    _sd_notify("READY=1\nSTATUS=running")
                    self.ready.set()
                    watchdog = _start_watchdog()
                    log.info(
                        "daemon_ready",
                        worker=self.pool.worker_id if self.pool is not None else None,
                        sources=[s.cfg.name for s in self.sources],
                        services=services.started,
                    )
                    _announce_ready(self.config, self.http.port if self.http is not None else None)
                await self.stop_requested.wait()
                _sd_notify("STOPPING=1")
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                await services.stop()
        log.info("daemon_stopped")
