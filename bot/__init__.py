"""The Discord bot (and its terminal twin, the console): slash commands, buttons, mention chat, progress
messages. Imports `service`, `core` and `worker.app` only (never torch, never `db` or `worker.tasks`: an
import-linter contract): jobs go to the workers by task name (bot/jobs.py).

    client.py      the discord.py client, error handler, `main()` (python -m bot)
    console.py     `improbable chat`: the same commands in a terminal (the service does the work for both)
    jobs.py        the one place that talks to Celery
    generate.py    /generate                               views.py      the persistent result buttons
    personas.py    /personas, /persona info|create|retrain|delete
    training.py    live training progress, /train status|cancel
    schedules.py   /schedule add|list|remove              queue.py      /queue
    guild.py       /settings show|set (a server's limits)
    chat.py        mention and reply chat                  streaming.py  one generate job shown in Discord
    limits.py      permissions, cooldowns, job caps        replies.py    deferring, ephemeral errors
    formatting.py  escaping, the 2,000-character limit, progress bars
"""
