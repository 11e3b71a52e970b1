"""The handler allow-list, the built-in handlers, JobContext, and how a handler is invoked."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from jobwire.exceptions import Reject

Handler = Callable[..., Any]
ProgressSink = Callable[[int, int, str | None], Awaitable[None]]


class HandlerLoadError(Exception):
    """A handler named in the config cannot be imported; names the handler and the path."""

    def __init__(self, name: str, target: str, reason: str) -> None:
        super().__init__(f"handlers.{name}: cannot load {target!r}: {reason}")
        self.name = name
        self.target = target


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
        """True once the job was asked to stop (cancel, timeout or shutdown); check it in loops."""
        return self._cancelled

    def cancel(self) -> None:
        """Raise the ``cancelled`` flag (the pool does this; handlers only read it)."""
        self._cancelled = True

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now fails the job for good."""
        return self.attempt >= self.max_attempts

    async def progress(self, percent: int, note: str | None = None) -> None:
        """Record progress (0-100) and an optional note, visible in ``jobs show``."""
        if self._progress_sink is not None:
            await self._progress_sink(self.job_id, max(0, min(100, int(percent))), note)

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


class HandlerRegistry:
    """The allow-list: only handlers named here (or built in) can ever run."""

    def __init__(self, handlers: Mapping[str, Handler], include_builtins: bool = True) -> None:
        self._handlers: dict[str, Handler] = dict(BUILTINS) if include_builtins else {}
        self._handlers.update(handlers)
        self._arity = {name: _wants_context(fn) for name, fn in self._handlers.items()}

    @classmethod
    def from_config(cls, mapping: Mapping[str, str]) -> HandlerRegistry:
        """Import every configured handler now, so a typo stops start-up rather than a job."""
        loaded: dict[str, Handler] = {}
        for name, target in mapping.items():
            try:
                loaded[name] = import_target(target)
            except Exception as exc:
                raise HandlerLoadError(name, target, f"{type(exc).__name__}: {exc}") from exc
        return cls(loaded)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def names(self) -> list[str]:
        """Every allowed handler name."""
        return sorted(self._handlers)

    async def invoke(self, name: str, payload: Any, ctx: JobContext) -> Any:
        """Run a handler: coroutines on the loop, plain functions in a thread."""
        fn = self._handlers.get(name)
        if fn is None:
            raise Reject(f"handler {name!r} is not in the allow-list (handlers: in the config)")
        args = (payload, ctx) if self._arity[name] else (payload,)
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        result = await asyncio.to_thread(fn, *args)
        if inspect.isawaitable(result):
            return await result
        return result


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
