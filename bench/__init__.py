"""chat-api's benchmark: `python -m bench`, `bench.compare`, `bench.check` (see bench/README.md)."""
