"""The run-directory contract: the writer, the tolerant readers, the metrics registry, annotations, trackers.
Imports only the ground floor and config. No torch (trackers import their own packages when chosen)."""
