"""End to end: an upload with nothing to learn is refused with its numbers when it is created, before any
training: a paragraph repeated a thousand times (too little distinct text) and a degenerate one (a line
repeated with a counter: distinct, but compressing to almost nothing)."""

from __future__ import annotations

import pytest

from .fake_discord import opt
from .test_e2e import TIMEOUT

pytestmark = pytest.mark.slow

REPETITIVE = ("Alice was beginning to get very tired of sitting by her sister on the bank. " * 1000).encode()
DEGENERATE = "".join(f"the cat sat on the mat number {i}\n" for i in range(3000)).encode()


@pytest.mark.parametrize("name, data, numbers", [
    ("parrot", REPETITIVE, "KB"),
    ("counter", DEGENERATE, "%"),
])
def test_an_upload_with_nothing_to_learn_is_refused_with_its_numbers(e2e, name, data, numbers):
    fake = e2e.fake
    att_id, att = fake.attachment(f"{name}.txt", data)
    ix = fake.slash("persona create", [opt("name", name), opt("file", att_id, 11), opt("family", "char-rnn"),
                                       opt("minutes", 0.05)], user=fake.owner, resolved={"attachments": {att_id: att}})
    refusal = fake.wait_for(lambda: [r.json["content"] for r in fake.sent("POST", f"/webhooks/{fake.app_id}/{ix.token}")
                                     if "cannot be used" in (r.json or {}).get("content", "")],
                            TIMEOUT, "the refusal")[0]
    assert numbers in refusal and any(ch.isdigit() for ch in refusal), refusal
    assert not [r for r in fake.sent("PATCH", f"/webhooks/{fake.app_id}/{ix.token}")
                if "Training" in (r.json or {}).get("content", "")]  # no run was started
    info = fake.slash("persona info", [opt("persona", name)], user=fake.owner)  # nothing was created
    fake.wait_for(lambda: [r for r in fake.sent("POST", f"/webhooks/{fake.app_id}/{info.token}")
                           if f"no persona called `{name}`" in (r.json or {}).get("content", "")],
                  TIMEOUT, "persona info saying there is no such persona")
