"""The Discord bot: slash commands, buttons, mention chat, progress messages. Imports `db` and
`worker.app` only (never torch): jobs go to the workers by task name (bot/jobs.py).

    client.py      the discord.py client, error handler, `main()` (python -m bot)
    service.py     what the commands do, without Discord (shared with the console chat, improbable/chat.py)
    jobs.py        the one place that talks to Celery
    generate.py    /generate and the result buttons        views.py      the persistent buttons
    personas.py    /personas, /persona info|create|retrain|delete
    training.py    live training progress, /train status|cancel
    schedules.py   /schedule add|list|remove              queue.py      /queue
    guild.py       /settings show|set (a server's limits)
    chat.py        mention and reply chat                  streaming.py  one generate job shown in Discord
    limits.py      permissions, cooldowns, job caps        replies.py    deferring, ephemeral errors
    formatting.py  escaping, the 2,000-character limit, progress bars
"""
