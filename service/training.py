"""Training runs: starting, watching and cancelling them, and their cluster metrics."""

from __future__ import annotations

import logging

from prometheus_client.core import GaugeMetricFamily

from core.contracts import RunProgress

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
