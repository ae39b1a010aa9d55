"""streams."""

__all__: list[str] = []
