"""Reliability: fault injection against real processes, and hostile input."""
