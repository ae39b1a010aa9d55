"""What the two code generators of the codec share: a module's source, built line by line.

`compiled` turns an Avro schema into readers and writers, `construct` a model
into its builder; both emit straight-line Python with constants bound by name.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Source"]


class Source:
    """Lines of one generated module and the constants its code refers to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self._n = 0

    def var(self, stem: str) -> str:
        """A fresh local name."""
        self._n += 1
        return f"{stem}{self._n}"

    def const(self, value: Any) -> str:
        """The name the generated code uses for `value`."""
        name = f"_C{len(self.consts)}"
        self.consts[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def run(self, filename: str, names: dict[str, Any]) -> dict[str, Any]:
        """Execute the module; its namespace (the constants, `names`, what it defines)."""
        namespace: dict[str, Any] = {**names, **self.consts}
        exec(compile(self.text(), filename, "exec"), namespace)
        return namespace
