"""Training runs: their limits (overrides, cooldown, queued runs), views of a run for the bot and the
console, cancelling, the result line, and the cluster metrics of runs (TrainingCollector)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from core.contracts import RunProgress
from core.settings import get_settings
from core.shards import Shards
from db import RunStatus, TrainingRun, open_storage, session_scope
from db.personas import delete_persona as db_delete_persona
from db.runs import ACTIVE_STATUSES, InvalidTransition, active_runs, last_run_requested, queued_runs, request_cancel
from db.types import as_utc, utcnow
from service.errors import NotAllowed, ServerTrainingQueueFull, TooManyRuns, TrainCooldown, UserError
from service.lookup import find_run, visible_to
from service.policy import Actor, Policy, may_train, policy


@dataclass
class NewRun:
    run_id: int
    persona_slug: str
    display_name: str
    created_persona: bool
    warnings: tuple[str, ...] = ()


def train_overrides(minutes: float | None) -> dict:
    if minutes is None:
        return {}
    cap = get_settings().train_max_minutes
    if not 0 < minutes <= cap:
        raise UserError(f"minutes must be more than 0 and at most {cap:g}.")
    return {"minutes": float(minutes)}


def check_training_limits(session, actor: Actor, pol: Policy) -> None:
    if actor.user_id is None:
        return
    mine = active_runs(session, requested_by=actor.user_id)
    if len(mine) >= max(pol.max_queued_jobs, 1):
        raise TooManyRuns(len(mine), pol.max_queued_jobs)
    if actor.guild_id is not None and not actor.operator:  # one server's backlog stays short (trainers are shared)
        waiting, cap = queued_runs(session, actor.guild_id), get_settings().train_queued_per_server
        if waiting >= cap:
            raise ServerTrainingQueueFull(waiting, cap)
    if pol.train_cooldown_seconds > 0 and not actor.can_manage:
        last = last_run_requested(session, actor.user_id, actor.guild_id)
        if last is not None:
            ready = last.created_at + timedelta(seconds=pol.train_cooldown_seconds)
            if ready > utcnow():
                raise TrainCooldown(as_utc(ready))



def abandon_run(run_id: int, *, delete_persona: bool) -> None:
    """The run could not be enqueued: cancel it (and remove a persona created just for it)."""
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            return
        persona = run.persona
        try:
            request_cancel(session, run)
        except InvalidTransition:
            pass
        session.commit()
        if delete_persona and persona.active_checkpoint_id is None:
            db_delete_persona(session, persona, open_storage())



@dataclass
class RunView:
    id: int
    persona_slug: str
    display_name: str
    status: str
    progress: RunProgress
    metrics: dict
    error: str | None
    requested_by: int | None
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    position: int | None  # in the training queue, when queued
    cancel_requested: bool

    @property
    def finished(self) -> bool:
        return RunStatus(self.status).finished


def _view(session, run: TrainingRun) -> RunView:
    position = None
    if run.status is RunStatus.QUEUED:
        ahead = session.scalar(select(func.count()).select_from(TrainingRun)
                               .where(TrainingRun.status.in_(ACTIVE_STATUSES), TrainingRun.id < run.id)) or 0
        position = ahead + 1
    return RunView(run.id, run.persona.slug, run.persona.display_name, run.status.value,
                   RunProgress.model_validate(run.progress or {}),
                   dict(run.metrics or {}), run.error, run.requested_by, run.guild_id, run.channel_id,
                   run.message_id, position, run.cancel_requested)


def run_status(run_id: int) -> RunView | None:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        return _view(session, run) if run is not None else None


def set_run_message(run_id: int, channel_id: int | None, message_id: int | None) -> None:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is not None:
            run.channel_id, run.message_id = channel_id, message_id


def training_runs(actor: Actor, *, mine: bool = False) -> list[RunView]:
    """Active runs in the actor's guild (or the actor's own there), oldest first."""
    with session_scope() as session:
        runs = active_runs(session, requested_by=actor.user_id if mine else None, guild_id=actor.guild_id)
        return [_view(session, r) for r in runs if visible_to(actor, r.guild_id, r.requested_by)]


def runs_to_watch(shards: Shards | None = None) -> list[RunView]:
    """Active runs with a progress message in the servers on these shards (core.shards; None: every one): the
    bot process of those shards resumes watching them after a restart."""
    shards = shards or Shards()
    with session_scope() as session:
        runs = [r for r in active_runs(session) if r.message_id is not None and r.channel_id is not None
                and shards.owns(r.guild_id)]
        return [_view(session, r) for r in runs]


def runs_training() -> int:
    """How many runs a trainer is working on now: running, with a heartbeat younger than the lease (a queued
    run waits behind them even when no trainer answers the broker: a solo trainer busy training cannot)."""
    lease, now = get_settings().train_lease_seconds, time.time()
    with session_scope() as session:
        reports = session.scalars(select(TrainingRun.progress).where(TrainingRun.status == RunStatus.RUNNING)).all()
    return sum(1 for p in reports if now - float((p or {}).get("heartbeat") or 0) < lease)


def cancel_training(actor: Actor, run_id: int | None = None) -> RunView:
    """Cancel a run of the actor's server (default: the actor's latest active one there). Its requester or a
    trainer may. Another server's run is refused as an unknown id (service.lookup.find_run)."""
    with session_scope() as session:
        if run_id is None:
            mine = [r for r in active_runs(session, requested_by=actor.user_id, guild_id=actor.guild_id)
                    if visible_to(actor, r.guild_id, r.requested_by)]
            if not mine:
                raise UserError("You have no training run queued or running.")
            run = mine[-1]
        else:
            run = find_run(session, run_id, actor)
        if run.requested_by != actor.user_id and not may_train(actor, policy(actor.guild_id)):
            raise NotAllowed("Only whoever started a run, or somebody who may train personas, can cancel it.")
        try:
            run = request_cancel(session, run)
        except InvalidTransition:
            raise UserError(f"Run {run.id} already {run.status.value}.") from None
        return _view(session, run)


def loss_curve(view: RunView) -> bytes | None:
    key = view.metrics.get("loss_png")
    if not key:
        return None
    try:
        return open_storage().get(key)
    except FileNotFoundError:
        return None



def describe_run_result(view: RunView) -> str:
    m = view.metrics
    facts = []
    if isinstance(m.get("val_loss"), int | float):
        facts.append(f"validation loss {m['val_loss']:.3f} nats/token")
    if isinstance(m.get("val_bpc"), int | float):
        facts.append(f"{m['val_bpc']:.2f} bits/char")
    if m.get("steps"):
        facts.append(f"{m['steps']} steps")
    if isinstance(m.get("elapsed"), int | float):
        facts.append(f"{m['elapsed']:.0f} s")
    promoted = m.get("promoted")
    if promoted is None:
        tail = ""
    elif promoted:
        tail = " · now active"
    else:  # the quality gate's sentence says why and what to do (train longer, upload more text)
        tail = f" · not promoted: {m.get('gate') or 'the previous model is better'}"
    return " · ".join(facts) + tail



log = logging.getLogger(__name__)

PROGRESS_GAUGES = ("step", "loss", "val_loss", "tokens_per_second", "eta_seconds")
_PROGRESS_FIELD = {"tokens_per_second": "tokens_per_s", "eta_seconds": "eta"}  # gauge name → RunProgress field


class TrainingCollector:
    """Training runs by status, and step / loss / validation loss / tokens/s / ETA / fraction done of each
    running run, from the `training_runs` rows the trainers keep up to date (core.contracts.RunProgress)."""

    def collect(self):
        runs = GaugeMetricFamily("improbable_training_runs", "Training runs by status.", labels=["status"])
        ratio = GaugeMetricFamily("improbable_training_progress_ratio", "Fraction of a running training "
                                  "run done (0-1).", labels=["run", "persona"])
        gauges = {name: GaugeMetricFamily(f"improbable_training_{name}", f"Running training run: {name}.",
                                          labels=["run", "persona"]) for name in PROGRESS_GAUGES}
        up = GaugeMetricFamily("improbable_database_up", "1 if the database answered this scrape.")
        try:
            from sqlalchemy import func, select

            from db import Persona, RunStatus, TrainingRun, session_scope

            with session_scope() as session:
                by_status = dict(session.execute(
                    select(TrainingRun.status, func.count()).group_by(TrainingRun.status)).all())
                running = session.execute(
                    select(TrainingRun.id, Persona.slug, TrainingRun.progress)
                    .join(Persona, Persona.id == TrainingRun.persona_id)
                    .where(TrainingRun.status == RunStatus.RUNNING)).all()
            for status in RunStatus:
                runs.add_metric([status.value], by_status.get(status, 0))
            for run_id, slug, record in running:
                progress = RunProgress.model_validate(record or {})
                labels = [str(run_id), slug]
                if (fraction := progress.done_fraction()) is not None:
                    ratio.add_metric(labels, float(fraction))
                for name in PROGRESS_GAUGES:
                    value = getattr(progress, _PROGRESS_FIELD.get(name, name))
                    if value is not None:
                        gauges[name].add_metric(labels, float(value))
            up.add_metric([], 1)
            yield runs
            yield ratio
            yield from gauges.values()
        except Exception as e:  # noqa: BLE001 - a scrape must not fail because the database is away
            log.warning("training metrics: database unreachable: %s", e)
            up.add_metric([], 0)
        yield up

