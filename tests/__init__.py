"""The tests: pytest against real PostgreSQL and real HTTP (fixtures in conftest.py, helpers in support/)."""
