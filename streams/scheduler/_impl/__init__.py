"""Private: import from `streams.scheduler`."""
