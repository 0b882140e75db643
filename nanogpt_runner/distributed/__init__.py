"""The process group, the device mesh, and `parallelize` (ddp, fsdp, tp, pp).
Imports model, config and the ground floor."""
