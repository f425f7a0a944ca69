"""Plumbing every package uses: configuration, the database, errors, limits, logging, telemetry."""
