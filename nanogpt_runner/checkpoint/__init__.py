"""The checkpoint folder format, the training state in it, the Checkpointer, resume planning, the DCP reader.
Imports distributed, model, data, runs, config and the ground floor."""
