"""The GPT and its optimizers.
Imports config and the ground floor."""
