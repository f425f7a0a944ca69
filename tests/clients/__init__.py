"""Tests of the client libraries (clients/) against live `chat-api serve` processes."""
