"""The event log and the stream: the contract of events, writing and reading the log, the hub's
fan-out, and GET /v1/events."""
