"""``python -m jobwire``."""

from jobwire.cli import main

main()
