"""The daemon's HTTP server (aiohttp): health, readiness, Prometheus metrics, admin API.

``/healthz`` says the process (its event loop) is alive; ``/readyz`` says whether it can do
its work: the database answers and every source marked ``required`` is connected. Both,
and ``/metrics``, are open to probes and Prometheus. ``/api/v1`` (one table of routes,
web.routes, also its OpenAPI document at ``/api/v1/openapi.json``) lists and shows jobs,
schedules and sources to a bearer token (``http.read_token`` or ``http.admin_token``;
anyone with ``http.public_reads``); its mutations (enqueue, retry, cancel) need
``http.admin_token`` and are refused when none is configured. Every error is JSON:
``{"error": "..."}``, with ``"field"`` naming the path parameter, query parameter or body
key at fault when the request was bad (400). No request input answers 500: values are
checked (jobwire.api_models) before they reach the store, and a value the database refuses
all the same is a 400; a store outage is a 503.
"""

from jobwire.web.responses import ApiError
from jobwire.web.server import HttpApi

__all__ = ["ApiError", "HttpApi"]
