"""Downstream tasks scored by the model's own loss: in the training loop on every layout, and on a checkpoint.
Imports the floors below it (data's task format, model, distributed, checkpoint, weights); train and cli use it."""
