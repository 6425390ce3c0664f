"""`crowdtk` itself: --version, and an unknown command or a missing argument is a usage error (exit 2)."""

from __future__ import annotations

from conftest import run

from crowdtk import __version__


def test_version_and_usage_errors():
    assert run("--version").stdout.strip() == f"crowdtk {__version__}"
    assert run("no-such-command").exit_code == 2
    assert run("gen-density").exit_code == 2  # missing argument
