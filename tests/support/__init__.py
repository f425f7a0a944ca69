"""Helpers the tests import: settings, servers, users, PostgreSQL, processes, receivers, clients."""
