"""The web dashboard under /ui/: jobs of every source to see, search, retry and cancel.

Server-rendered (Jinja2 through aiohttp-jinja2), htmx vendored under static/ (no build
step, no CDN); off unless ``http.dashboard.enabled``. See README, Dashboard.
"""

from jobwire.dashboard.site import Dashboard

__all__ = ["Dashboard"]
