"""Speed and memory: the device, the memory estimate, step timing (autotune) and the plan.
Imports weights and everything below it."""
