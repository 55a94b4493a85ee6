"""The commands without Discord: policy, generation requests, personas, training runs, schedules.

Plain synchronous functions over the database, shared by the Discord bot and the console chat (the bot calls
them with asyncio.to_thread). Anything a user should fix raises a service.errors.UserError: a template with
typed fields, which each front end renders in its own way. Torch-free and Discord-free: service/ returns data,
never markup (tests/service/test_no_markup.py).
"""
