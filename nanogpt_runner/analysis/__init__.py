"""Numbers and sentences from run directories: records, comparison across runs, figures, the report.
Imports runs, config and the ground floor. No torch."""
