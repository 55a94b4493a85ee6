"""Workers run the jobs. `worker.app` is the Celery app (torch-free: the bot imports it, and it connects
`worker.signals`, the logs and metrics of workers); `worker.tasks` holds the tasks by stable name and
documents their payloads (core.contracts); `worker.engine`, `worker.cache` and `worker.generation` serve
generate requests in shared batches; `worker.training` is the trainer service; `worker.schedules` posts on
a schedule."""
