"""Exit codes, the same for every command and for the supervisor of workers.processes
(docs/operations/cli.md lists them)."""

EXIT_OK = 0
EXIT_NOTHING = 1  # not found, or nothing done; also: the database is unavailable
EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2  # bad input: options, config, a schema this jobwire does not match
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT) stopped an action mid-way; what was done is said
