"""Private: import from `agents`."""
