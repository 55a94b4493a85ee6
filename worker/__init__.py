"""Workers run the jobs. `worker.app` is the Celery app (torch-free: the bot imports it); `worker.tasks`
holds the tasks by stable name and documents their payloads; `worker.engine`, `worker.cache` and
`worker.generation` serve generate requests in shared batches; `worker.training` is the trainer service;
`worker.schedules` posts on a schedule."""
