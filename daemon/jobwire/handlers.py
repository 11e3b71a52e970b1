"""The handler allow-list, the built-in handlers, JobContext, and how a handler is invoked."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import importlib
import inspect
import itertools
import json
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import structlog

from jobwire.builtins.settings import builtin_kind
from jobwire.effects import ChildJob, Effects, OutboxMessage, Recorded, encode_body
from jobwire.exceptions import Reject
from jobwire.publish_builtin import PUBLISH_KIND, publish_builtin

Handler = Callable[..., Any]
ProgressSink = Callable[[int, int, str | None], Awaitable[None]]
MAX_AFTER = 1000  # ids one child job may wait for, as the enqueue API allows
MAX_PROGRESS_NOTE = 2000  # characters of a progress note kept


# Set in the child of an os.fork(): a handler's forked child that returns or raises out of the
# handler came back into a copy of the daemon, which then wrote outcomes, renewed leases and
# claimed jobs on the parent's own database connections (a drill saw the job stuck running,
# the pool's connections broken and the stop hung). A flag, not a getpid() per job.
_forked = False


def _note_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_note_fork)


def in_fork_child() -> bool:
    """True in the child of an os.fork() made since this process started."""
    return _forked


def end_fork_child(job_id: object, code: int, handler: str | None = None) -> NoReturn:
    """End a handler's forked child that left the handler, before it touches the daemon's
    connections: one JSON line on stderr (not structlog: its locks may be held by a thread
    the fork left behind), then ``os._exit(code)``."""
    try:
        line = {
            "event": "handler_fork_child_ended",
            "level": "error",
            "job_id": job_id,
            "handler": handler,
            "pid": os.getpid(),
            "exit_code": code,
            "note": "a forked child must end itself (os._exit) inside the handler",
        }
        os.write(2, (json.dumps(line) + "\n").encode())
    finally:
        os._exit(code)


@dataclass(frozen=True)
class HandlerFailure:
    """One configured handler that cannot be imported, and why."""

    name: str
    target: str
    reason: str

    def __str__(self) -> str:
        return f"handlers.{self.name}: cannot load {self.target!r}: {self.reason}"


class HandlerLoadError(Exception):
    """Handlers named in the config cannot be imported; names each handler and its path."""

    def __init__(self, failures: Sequence[HandlerFailure]) -> None:
        super().__init__("\n".join(str(f) for f in failures))
        self.failures = list(failures)


@dataclass(slots=True)
class JobContext:
    """What a handler knows about the job it runs."""

    job_id: int
    attempt: int
    max_attempts: int
    queue: str
    handler: str
    source: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str | None = None
    _log: Any = None
    _progress_sink: ProgressSink | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    # A plain flag, not a threading.Event: one per job is made, and the GIL makes a bool
    # write visible to a handler's thread.
    _cancelled: bool = False
    # A plain handler's thread (its future): the pool keeps the job's slot taken until it
    # returns, even after the attempt ended (timeout, cancel): a thread cannot be stopped.
    _thread: concurrent.futures.Future[Any] | None = None
    # What publish() and enqueue() recorded; written only with a successful outcome.
    _effects: Effects | None = None
    # The configured outputs and allowed handlers (set by the registry's invoke).
    _outputs: frozenset[str] = frozenset()
    _handlers: frozenset[str] = frozenset()

    @property
    def log(self) -> Any:
        """A structlog logger bound to this job (made on first use: most handlers never log)."""
        if self._log is None:
            self._log = bound_logger(
                job_id=self.job_id, queue=self.queue, handler=self.handler, attempt=self.attempt
            )
        return self._log

    @property
    def cancelled(self) -> bool:
        """True once the job was asked to stop (cancel, timeout, lost lease or shutdown);
        check it in loops, above all in plain (threaded) handlers, which cannot be stopped."""
        return self._cancelled

    def cancel(self) -> None:
        """Raise the ``cancelled`` flag (the pool does this; handlers only read it)."""
        self._cancelled = True

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now fails the job for good."""
        return self.attempt >= self.max_attempts

    async def progress(self, percent: int, note: str | None = None) -> None:
        """Record progress (0-100) and an optional note (cut to 2,000 characters), visible in
        ``jobs show``."""
        if self._progress_sink is not None:
            if note is not None and len(note) > MAX_PROGRESS_NOTE:
                note = note[:MAX_PROGRESS_NOTE]  # a line for a list (a drill sent 10 MB)
            await self._progress_sink(self.job_id, max(0, min(100, int(percent))), note)

    async def publish(
        self,
        output: str,
        body: Any,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send ``body`` (bytes, text or JSON) to a configured output if this attempt
        succeeds: written to the outbox with the outcome, relayed after; ``key`` keeps order
        among messages with the same key. Nothing is sent for a failed attempt."""
        self.publish_nowait(output, body, key, headers)

    def publish_nowait(
        self,
        output: str,
        body: Any,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``publish`` for plain (threaded) handlers: it only records, so nothing to await."""
        if output not in self._outputs:
            known = ", ".join(sorted(self._outputs)) or "none configured"
            raise Reject(f"unknown output {output!r} (outputs: {known})")
        data, content_type = encode_body(body)
        sent = {str(k): str(v) for k, v in (headers or {}).items()}
        if content_type is not None:
            sent.setdefault("content-type", content_type)
        effects = self._recorded()
        n = len(effects.messages) + 1
        effects.messages.append(OutboxMessage(output, n, data, key, sent))

    async def enqueue(
        self,
        handler: str,
        payload: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: float = 0.0,
        dedup_key: str | None = None,
        max_attempts: int | None = None,
        after: Iterable[int] | None = None,
    ) -> None:
        """Create a child job (``parent_id``: this job) if this attempt succeeds; ``after``:
        ids of jobs it waits for (this job's own id included: it then runs after this one)."""
        self.enqueue_nowait(
            handler,
            payload,
            queue=queue,
            priority=priority,
            delay=delay,
            dedup_key=dedup_key,
            max_attempts=max_attempts,
            after=after,
        )

    def enqueue_nowait(
        self,
        handler: str,
        payload: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: float = 0.0,
        dedup_key: str | None = None,
        max_attempts: int | None = None,
        after: Iterable[int] | None = None,
    ) -> None:
        """``enqueue`` for plain (threaded) handlers: it only records, so nothing to await."""
        if handler not in self._handlers:
            raise Reject(f"cannot enqueue {handler!r}: not in the allow-list (handlers:)")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        waits = None if after is None else tuple(after)
        # Checked here, as the enqueue API checks them: a bad id would otherwise fail the
        # whole completion statement, long after the handler that made the mistake.
        if waits is not None and (
            len(waits) > MAX_AFTER
            or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in waits)
        ):
            raise ValueError(f"after must be at most {MAX_AFTER} positive job ids")
        payload_json = None if payload is None else json.dumps(payload, allow_nan=False)
        child = ChildJob(
            handler,
            payload_json,
            queue,
            int(priority),
            max(0.0, delay),
            dedup_key,
            max_attempts,
            waits or None,
        )
        self._recorded().children.append(child)

    def _recorded(self) -> Effects:
        if self._effects is None:
            self._effects = Effects()
        return self._effects

    def progress_threadsafe(self, percent: int, note: str | None = None) -> None:
        """Record progress from a plain (threaded) handler without waiting for the write."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.progress(percent, note), self._loop)


async def _noop(payload: Any, ctx: JobContext) -> None:
    """Do nothing: for benchmarks and smoke tests."""


async def _echo(payload: Any, ctx: JobContext) -> Any:
    """Return the payload as the result."""
    return payload


async def _sleep(payload: Any, ctx: JobContext) -> dict[str, float]:
    """Sleep ``payload["seconds"]``; honours cancellation."""
    seconds = float((payload or {}).get("seconds", 1.0)) if isinstance(payload, dict) else 1.0
    await asyncio.sleep(seconds)
    return {"slept": seconds}


async def _fail(payload: Any, ctx: JobContext) -> None:
    """Always raise: for drills of retries and failure paths."""
    message = payload.get("message", "failing on purpose") if isinstance(payload, dict) else None
    raise RuntimeError(message or "failing on purpose")


BUILTINS: dict[str, Handler] = {"noop": _noop, "echo": _echo, "sleep": _sleep, "fail": _fail}


def import_target(target: str) -> Handler:
    """Import ``package.module:function`` (or ``package.module.function``)."""
    module_name, sep, attr = target.partition(":")
    if not sep:
        module_name, _, attr = target.rpartition(".")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj  # type: ignore[no-any-return]


_WorkItem = tuple[concurrent.futures.Future[Any], Callable[[], Any]]


class HandlerThreads(concurrent.futures.Executor):
    """The threads plain (blocking) handlers run on, at most ``max_workers`` of them.

    Separate from asyncio's default executor, which the loop and some adapters use for their
    own blocking calls: handlers there competed with that I/O for its few threads. Daemon
    threads, started as needed: a handler stuck for good must not keep the process from
    exiting after a stop (a ThreadPoolExecutor's threads are joined at interpreter exit).
    """

    def __init__(self, max_workers: int, name: str = "jobwire-handler") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._name = name
        self._numbers = itertools.count(1)
        self._queue: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` on one of the threads; returns its future."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run a handler after the handler threads shut down")
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._queue.put((future, functools.partial(fn, *args, **kwargs)))
            # An idle thread takes it; otherwise start one, up to the limit (past it, the
            # item waits for the first thread that frees).
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{next(self._numbers)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.put(None)  # wake the next thread: all of them end
                return
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except Exception as exc:  # noqa: BLE001 - handed to the job's task
                    if _forked:
                        _leave_fork_thread(exc)
                    future.set_exception(exc)
                except BaseException as exc:  # noqa: BLE001 - must not end the loop thread
                    if _forked:
                        _leave_fork_thread(exc)
                    # SystemExit or KeyboardInterrupt re-raised in the pool's task would stop
                    # the whole daemon: to the pool it is one handler's failure.
                    future.set_exception(
                        RuntimeError(f"{type(exc).__name__} raised in a handler thread: {exc}")
                    )
                else:
                    if _forked:
                        _leave_fork_thread(None)
                    future.set_result(result)
            del item, future, call  # drop the job's references before waiting for the next
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with ``cancel_futures`` drop what waits for a thread; with
        ``wait`` join the threads (they are daemon threads: without, nothing waits for them)."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            self._queue.put(None)
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()


def _leave_fork_thread(exc: BaseException | None) -> NoReturn:
    """A plain handler's forked child left the handler: the only thread it has would wait
    for the next job for good (a process left behind per job), or hand it to the daemon."""
    # The job's id is bound for its log lines (the thread runs in a copy of its context).
    job_id = structlog.contextvars.get_contextvars().get("job_id")
    end_fork_child(job_id, 0 if exc is None else _exit_code(exc))


def _exit_code(exc: BaseException) -> int:
    """The exit status a process ending with ``exc`` has: SystemExit's code, else 1."""
    if not isinstance(exc, SystemExit):
        return 1
    code = exc.code
    if code is None:
        return 0
    return code & 0xFF if isinstance(code, int) else 1


class HandlerRegistry:
    """The allow-list: only handlers named here (or built in) can ever run."""

    def __init__(self, handlers: Mapping[str, Handler], include_builtins: bool = True) -> None:
        self._handlers: dict[str, Handler] = dict(BUILTINS) if include_builtins else {}
        self._handlers.update(handlers)
        self._arity = {name: _wants_context(fn) for name, fn in self._handlers.items()}
        # Looked up once: inspect's check walks the function's wrappers on every call.
        self._async = {n: inspect.iscoroutinefunction(fn) for n, fn in self._handlers.items()}
        self._names = frozenset(self._handlers)
        # The configured outputs' names (the daemon sets them): ctx.publish checks them.
        self.outputs: frozenset[str] = frozenset()
        # Configured names of built-in handlers (handlers: {name: "builtin:KIND"}) -> KIND.
        self.builtin_kinds: dict[str, str] = {}

    @classmethod
    def from_config(cls, mapping: Mapping[str, str]) -> HandlerRegistry:
        """Import every configured handler now, so a typo stops start-up rather than a job;
        raise HandlerLoadError naming every one that fails, not just the first."""
        loaded: dict[str, Handler] = {}
        failures: list[HandlerFailure] = []
        kinds: dict[str, str] = {}
        for name, target in mapping.items():
            kind = builtin_kind(target)
            if kind == PUBLISH_KIND:
                loaded[name] = publish_builtin(name)  # to the output of the same name
                continue
            if kind is not None:
                # Bound to the running built-in by the daemon (bind_builtins) at start-up.
                kinds[name] = kind
                loaded[name] = _unbound_builtin(kind)
                continue
            try:
                loaded[name] = fn = import_target(target)
            except Exception as exc:  # noqa: BLE001 - each is reported, all together
                failures.append(HandlerFailure(name, target, f"{type(exc).__name__}: {exc}"))
                continue
            # A signature no call can satisfy would fail every job at run time instead.
            problem = signature_problem(fn)
            if problem is not None:
                failures.append(HandlerFailure(name, target, problem))
        if failures:
            raise HandlerLoadError(failures)
        registry = cls(loaded)
        registry.builtin_kinds = kinds
        return registry

    def bind_builtins(self, make: Callable[[str], Handler]) -> None:
        """Put the running built-in handlers (``make(kind)``) behind their configured names."""
        for name, kind in self.builtin_kinds.items():
            self._handlers[name] = fn = make(kind)
            self._arity[name] = True
            self._async[name] = inspect.iscoroutinefunction(fn)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def names(self) -> list[str]:
        """Every allowed handler name."""
        return sorted(self._handlers)

    async def invoke(
        self,
        name: str,
        payload: Any,
        ctx: JobContext,
        threads: concurrent.futures.Executor | None = None,
    ) -> Any:
        """Run a handler: coroutines on the loop, plain functions on ``threads`` (asyncio's
        default executor without). The thread's future is left in ``ctx._thread``."""
        fn = self._handlers.get(name)
        if fn is None:
            raise Reject(f"handler {name!r} is not in the allow-list (handlers: in the config)")
        ctx._outputs = self.outputs
        ctx._handlers = self._names
        result = await self._call(fn, name, payload, ctx, threads)
        if ctx._effects:
            return Recorded(result, ctx._effects)
        return result

    async def _call(
        self,
        fn: Handler,
        name: str,
        payload: Any,
        ctx: JobContext,
        threads: concurrent.futures.Executor | None,
    ) -> Any:
        args = (payload, ctx) if self._arity[name] else (payload,)
        if self._async[name]:
            try:
                result = await fn(*args)
            except BaseException as exc:
                if _forked:  # a forked child raised out of the handler
                    end_fork_child(ctx.job_id, _exit_code(exc), ctx.handler)
                raise
            if _forked:  # a forked child returned out of the handler
                end_fork_child(ctx.job_id, 0, ctx.handler)
            return result
        if threads is None:
            result = await asyncio.to_thread(fn, *args)
        else:
            # As asyncio.to_thread does: the handler's thread sees the task's context vars
            # (the job id bound for its log lines).
            call = functools.partial(contextvars.copy_context().run, fn, *args)
            ctx._thread = threads.submit(call)
            # Cancelling this await (timeout, cancel) leaves the thread running on: only a
            # handler that has not started yet is dropped.
            result = await asyncio.wrap_future(ctx._thread)
        if inspect.isawaitable(result):
            return await result
        return result


def _unbound_builtin(kind: str) -> Handler:
    """Stands for a built-in until the daemon binds it: outside a daemon it cannot run."""

    async def unbound(payload: Any, ctx: JobContext) -> None:
        raise Reject(f"built-in {kind!r} runs only inside the daemon (not bound here)")

    return unbound


def signature_problem(fn: Handler) -> str | None:
    """Why ``fn`` cannot be called as a handler, ``(payload)`` or ``(payload, ctx)``; None
    when it can, or when its signature cannot be read (a C function)."""
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        return "it is a generator function; a handler returns its result (or awaits it)"
    try:
        # The callable's own signature, not the one functools.wraps copied from what it
        # wraps: a decorator's wrapper may take (payload, ctx) and pass the inner more.
        params = list(inspect.signature(fn, follow_wrapped=False).parameters.values())
    except (TypeError, ValueError):
        return None
    calls = "a handler is called with (payload) or (payload, ctx)"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in params):
        return f"it takes no positional argument; {calls}"
    required = [p.name for p in positional if p.default is p.empty]
    if len(required) > 2:
        return f"it needs {len(required)} arguments ({', '.join(required)}); {calls}"
    keywords = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if keywords:
        return f"it needs keyword-only arguments ({', '.join(keywords)}); {calls}"
    return None


def _wants_context(fn: Handler) -> bool:
    """Handlers may take ``(payload, ctx)`` or just ``(payload)``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def bound_logger(**context: Any) -> Any:
    """A structlog logger carrying the job's identity."""
    return structlog.get_logger("jobwire.job").bind(**context)
