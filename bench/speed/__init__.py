"""Speed and memory: training throughput, generation, the queue under load, the bot's memory, the GPU path."""
