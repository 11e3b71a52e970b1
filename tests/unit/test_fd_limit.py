"""A command that runs out of file descriptors says so in one line, not a traceback."""

from __future__ import annotations

import errno
import os

import pytest

from jobwire.cli.common import run
from jobwire.exit_codes import EXIT_UNAVAILABLE


async def _open_one_more() -> None:
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), "/some/module.py")


async def _other_os_error() -> None:
    raise OSError(errno.EACCES, os.strerror(errno.EACCES))


def test_too_many_open_files_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(_open_one_more())
    assert exited.value.code == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "too many open files" in err
    assert "LimitNOFILE" in err


def test_another_os_error_is_not_taken_for_it() -> None:
    with pytest.raises(PermissionError):
        run(_other_os_error())
