"""The client libraries (clients/), tested against live `chat-api serve` processes."""
