"""Benchmarks, run as modules from the repository root: `python -m bench.speed.<name>` for how fast the
trainer, the sampler, the queue and the bot are, `python -m bench.quality.<name>` for how good the models are.
Results go to bench/results/."""
