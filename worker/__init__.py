"""Workers run the jobs. `worker.app` is the Celery app (torch-free: the bot imports it, and it connects
`worker.signals`, the logs and metrics of workers); `worker.tasks` holds the tasks by stable name, typed
with core.contracts; `worker.serve` serves generate requests in shared batches (one `Runtime` per
process); `worker.training` is the trainer service; `worker.schedules` posts on a schedule."""
