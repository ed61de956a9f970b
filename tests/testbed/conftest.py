"""The session-wide testbed: real SSH hosts in network namespaces (needs root, ip and sshd).

Without them the testbed tests are skipped with the reason, except in CI (env var CI set),
where a missing prerequisite is a failure: CI must exercise the real SSH path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from torc_stress.cluster import testbed as tb
from torc_stress.errors import TestbedError

ROOT = Path(__file__).resolve().parents[2]


def require_testbed_prerequisites() -> None:
    """Skip (or, in CI, fail) when the testbed cannot be built on this machine."""
    try:
        tb.check_prerequisites()
    except TestbedError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the testbed tests, but {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def testbed_config() -> tb.TestbedConfig:
    """The default testbed, with its state in the project's .testbed (as inventory/testbed.yml
    expects)."""
    return tb.TestbedConfig(state_dir=ROOT / ".testbed")


@pytest.fixture(scope="session")
def testbed(testbed_config: tb.TestbedConfig) -> Iterator[tb.Testbed]:
    """Build the default testbed once per session; always tear it down."""
    require_testbed_prerequisites()
    try:
        yield tb.testbed_up(testbed_config)
    finally:
        tb.testbed_down(testbed_config)
