"""Fixtures of the operator tests (helpers live in tests.operator.harness)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.operator.harness import RecordingKube


@pytest.fixture(scope="module")
def opkube() -> Iterator[RecordingKube]:
    kube = RecordingKube().start()
    try:
        yield kube
    finally:
        kube.stop()
