"""Small, complete processors that show how to write one (and prove the shells work)."""

__all__: list[str] = []
