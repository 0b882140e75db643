"""What `nanogpt-run` does before and around training: the Hydra app, checks, run dirs, torchrun, sweeps, search.
Imports train and everything below it; torch only after the config is composed."""
