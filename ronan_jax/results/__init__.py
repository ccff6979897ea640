"""Where verdicts go: the SQLite store, merging shards, telemetry, export and ground-truth labels."""
