"""The config: the dataclass schema (every default, once), derived layout facts, and `validate`.
Imports only the ground floor (console, errors, fsutil, safe_pickle). No torch."""
