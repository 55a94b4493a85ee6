"""The commands without Discord: policy, generation requests, personas, training runs, schedules.

Plain synchronous functions over the database, shared by the Discord bot and the console chat (the bot calls
them with asyncio.to_thread). Anything a user should fix raises `UserError` with the message to show.
Torch-free and Discord-free.
"""
