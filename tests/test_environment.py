"""A missing service skips a test on a developer's machine and fails it in CI."""

from __future__ import annotations

import pytest

from tests.environment import unavailable


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                         ("", pytest.skip.Exception), ("false", pytest.skip.Exception)])
def test_a_missing_service_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="Redis is unreachable"):
        unavailable("Redis is unreachable at redis://127.0.0.1:1/0")
