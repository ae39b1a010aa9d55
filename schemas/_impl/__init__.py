"""Private implementation of the schemas package; import from `schemas` instead."""

__all__: list[str] = []
