"""The loop and the process that runs it: set-up, step, summary, batches, stopping, signals, the worker.
Imports perf and everything below it."""
