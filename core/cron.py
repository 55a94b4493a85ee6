"""A schedule's cron expression: the one parser of the service (which checks what users type) and the worker
(which finds the due slots). Celery's crontab does the work; it is the only piece of celery core uses."""

from __future__ import annotations

CRON_FIELDS = "minute hour day-of-month month day-of-week"


def parse_cron(expr: str):
    """A schedule's 5-field cron expression (UTC) as celery's crontab: the one parser of the service
    (which checks what users type) and the worker (which finds the due slots). ValueError when invalid."""
    from celery.schedules import crontab

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"it needs 5 fields ({CRON_FIELDS}), e.g. `0 9 * * 1-5`")
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month,
                       day_of_week=day_of_week)
    except Exception as e:  # noqa: BLE001 - celery raises ValueError and friends
        raise ValueError(str(e)) from None
