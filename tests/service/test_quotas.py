"""The deployment's ceilings (service.policy, service.ambient, service.schedules, service.quotas.check_upload)
and the cost of a job (core.cost, service.quotas.request_cost), on a real migrated SQLite file."""

from __future__ import annotations

import pytest

import service.ambient
import service.generation
import service.policy
import service.quotas
import service.schedules
from core.cost import job_cost
from db import Schedule, session_scope
from service.errors import StorageFull, TooManySchedules, TooOften, TrainingBudget, UploadTooLarge
from service.policy import Actor, UserError
from tests.environment import configured

from .test_service import GUILD, MANAGER, _activate, env  # noqa: F401 - pytest fixtures used by name


def test_a_manager_asking_past_every_ceiling_gets_the_ceilings(env):  # noqa: F811
    top = service.policy.ceilings()
    pol = service.policy.update_policy(MANAGER, max_queued_jobs=100, cooldown_seconds=0, train_cooldown_seconds=0,
                                       max_upload_mb=100)
    assert (pol.max_queued_jobs, pol.cooldown_seconds, pol.train_cooldown_seconds, pol.max_upload_bytes) == \
        (top.jobs_per_member, top.min_cooldown_seconds, top.min_train_cooldown_seconds, top.upload_bytes)
    assert (top.jobs_per_member, top.min_cooldown_seconds, top.upload_bytes) == (5, 2, 25_000_000)
    assert len(pol.notes) == 4 and all("ceiling" in n for n in pol.notes)
    assert service.policy.policy(GUILD) == pol  # stored as the ceilings, read the same


def test_a_lowered_ceiling_applies_to_stored_settings(env):  # noqa: F811
    service.policy.update_policy(MANAGER, max_queued_jobs=4, cooldown_seconds=3)
    with configured({"IMPROBABLE_CEILING_JOBS_PER_MEMBER": "2", "IMPROBABLE_CEILING_MIN_COOLDOWN_SECONDS": "20"}):
        pol = service.policy.policy(GUILD)
        assert (pol.max_queued_jobs, pol.cooldown_seconds) == (2, 20)


def test_job_cost_units():
    default = job_cost({}, 6_748_360, 1, "char-rnn")
    assert default == job_cost({"max_tokens": 500, "temperature": 0.8}) == 1.0
    assert job_cost({"max_tokens": 80}, family="word-gru") == 1.0
    blend = job_cost({"max_tokens": 2000, "improbability": 0.05}, 6_748_360, 2, "char-rnn")
    assert blend >= 20 * default
    assert job_cost({"max_tokens": 2000}) == 4.0  # tokens
    assert job_cost({"improbability": 0.01}, family="word-gru") < job_cost({"improbability": 0.01})  # drive
    assert job_cost({}, 64_000_000) == 4.0  # a model four times the reference
    assert job_cost({"max_tokens": 20}) == 0.25  # a job's fixed costs


def test_request_cost_reads_the_checkpoint(env):  # noqa: F811
    _activate("alice")
    _activate("shakespeare")
    actor = Actor(7, GUILD, 5)
    plain = service.generation.prepare_generation("alice", "Alice", actor)
    blend = service.generation.prepare_generation("alice+shakespeare", "Alice", actor,
                                                  {"max_tokens": 2000, "improbability": 0.05})
    one = service.quotas.request_cost(plain.payload, plain.family)
    assert one == 1.0 and service.quotas.request_cost(blend.payload, blend.family) >= 20 * one


def test_ambient_is_clamped_to_the_ceilings(env):  # noqa: F811
    _activate("alice")
    on = service.ambient.enable(MANAGER, 42, "alice", 1.0, "0")
    assert (on.chance, on.cooldown_seconds) == (0.2, 30) and len(on.notes) == 2
    assert service.ambient.setting(42) == on


def test_schedules_past_the_cap_or_too_often_are_refused_before_storing(env):  # noqa: F811
    with pytest.raises(TooOften, match="at most once every 10m"):
        service.schedules.add_schedule(MANAGER, "alice", 9, every="5m")
    with pytest.raises(TooOften):
        service.schedules.add_schedule(MANAGER, "alice", 9, cron="*/5 * * * *")
    with configured({"IMPROBABLE_CEILING_SCHEDULES_PER_SERVER": "2"}):
        service.schedules.add_schedule(MANAGER, "alice", 9, every="1h")
        service.schedules.add_schedule(MANAGER, "alice", 9, cron="0 9 * * *")
        with pytest.raises(TooManySchedules) as refused:
            service.schedules.add_schedule(MANAGER, "alice", 9, every="2h")
        assert refused.value.limit == 2
    with session_scope() as session:
        assert session.query(Schedule).filter_by(guild_id=GUILD).count() == 2


def test_uploads_are_checked_from_their_announced_sizes(env):  # noqa: F811
    service.policy.update_policy(MANAGER, max_upload_mb=1)
    with pytest.raises(UserError, match="already taken"):
        service.quotas.check_upload(MANAGER, sizes=[10], name="alice")
    with pytest.raises(UserError, match="not a valid persona name"):
        service.quotas.check_upload(MANAGER, sizes=[10], name="No Good")
    with pytest.raises(UploadTooLarge):
        service.quotas.check_upload(MANAGER, sizes=[600_000, 600_000], name="poet")
    with configured({"IMPROBABLE_CEILING_STORED_BYTES_PER_SERVER": "1000"}):
        with pytest.raises(StorageFull):
            service.quotas.check_upload(MANAGER, sizes=[1001], name="poet")
    service.quotas.check_upload(MANAGER, sizes=[1000], name="poet", minutes=200)
    service.quotas.record_training(GUILD, 200)
    with pytest.raises(TrainingBudget):
        service.quotas.check_upload(MANAGER, sizes=[1000], name="poet", minutes=41)
    service.quotas.check_upload(MANAGER, sizes=[1000], name="poet", minutes=40)
