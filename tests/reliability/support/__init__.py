"""The fault tests' harness: faults land only on clusters and processes the test started itself."""
