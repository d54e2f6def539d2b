"""The harness: pytest plugin, stack orchestration, time, faults, invariants, reports and the CLI."""
