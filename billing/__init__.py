"""billing."""

__all__: list[str] = []
