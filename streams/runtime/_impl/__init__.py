"""The batched shell's parts, chosen once per processor (see `BatchedProcessor`)."""

__all__: list[str] = []
