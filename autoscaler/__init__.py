"""autoscaler."""\n\n__all__: list[str] = []
