"""Hostile uploads through the real ingest path: every case of tests/fixtures/hostile_uploads.py, on a
temporary migrated SQLite database and local storage, must be refused or accepted as expected, never crash,
never store mojibake, and leave nothing behind when refused."""

from __future__ import annotations

import pytest

from tests.fixtures import hostile_uploads as hostile


@pytest.fixture(scope="module")
def outcomes():
    return hostile.run()


def test_at_least_sixty_cases_with_unique_names():
    names = [case.name for case in hostile.cases()]
    assert len(names) >= 60
    assert len(set(names)) == len(names)


def test_nothing_accepted_wrongly_no_crash_no_debris(outcomes):
    totals = hostile.summary(outcomes)
    bad = [(o.case, o.outcome, o.message) for o in outcomes if o.wrong or o.crash or o.debris]
    assert (totals["accepted_wrongly"], totals["crashes"], totals["debris"]) == (0, 0, 0), bad


def test_every_case_ends_as_expected(outcomes):
    unexpected = [(o.case, o.outcome, o.expected, o.message) for o in outcomes if o.outcome not in o.expected]
    assert not unexpected


def test_the_named_hard_cases_are_refused_or_decoded_correctly(outcomes):
    by_case = {o.case: o for o in outcomes}
    for name in ("mixed-utf8-and-cp1252", "mixed-cp1252-and-shift-jis"):
        assert by_case[name].outcome == "encoding"
    assert by_case["utf-16-with-nul-chars"].outcome == "binary"
    assert by_case["only-bidi-controls"].outcome == "no_text"
    assert by_case["name-with-nul"].outcome == "bad_filename"
    assert by_case["utf-8-with-3-stray-bytes"].outcome == "accepted"  # and its text is exactly the original


def test_refusals_leave_no_row_and_no_blob_even_after_an_accepted_upload():
    # refusals right after accepted uploads (cases run in the table's order): the counts must not move
    outcomes = hostile.run(only=["utf-8", "cp1252-curly-quotes", "utf-16-with-nul-chars", "gzip", "name-with-nul"])
    assert [(o.case, o.outcome, o.debris) for o in outcomes] == [
        ("utf-8", "accepted", False), ("cp1252-curly-quotes", "accepted", False),
        ("utf-16-with-nul-chars", "binary", False), ("gzip", "compressed", False),
        ("name-with-nul", "bad_filename", False)]
