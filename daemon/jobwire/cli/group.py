"""The ``jobwire`` group: where the global options are first accepted."""

from __future__ import annotations

import click

from jobwire import __version__
from jobwire.cli.common import global_options
from jobwire.logs import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jobwire")
@global_options
def main() -> None:
    """jobwire: broker messages in, durable jobs out.

    -c, --database-url, --schema, -o and -v go before or after the subcommand. Exit codes:
    0 ok, 1 not found or nothing done (or the database is unavailable), 2 bad input.
    """
    # Quiet until a command has read its config: structlog's default would print to stdout.
    configure_logging("auto", "warning")
