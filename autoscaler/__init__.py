"""autoscaler."""

__all__: list[str] = []
