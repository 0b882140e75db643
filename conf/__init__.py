"""The shipped Hydra configs, importable as nanogpt_runner.conf so a wheel carries them (pyproject maps it here)."""
