"""How many tokens a prompt counts for when no tokenizer has said.

One rule, used where a call is simulated (the stub provider) and where a
call is priced before it runs (billing's cost estimate for budget
admission), so the estimate and the stub's bill never drift apart.
"""

from __future__ import annotations

import hashlib
import math

__all__ = ["estimated_input_tokens", "estimated_output_tokens", "max_tokens_of"]


def estimated_input_tokens(prompt: str) -> int:
    """ceil(characters / 4): Krako 2.0's rule for a prompt's input tokens."""
    return math.ceil(len(prompt) / 4)


def estimated_output_tokens(prompt: str, max_tokens: int | None) -> int:
    """`max_tokens` when the caller capped the answer; otherwise 8 to 64, from the prompt."""
    if max_tokens:
        return max_tokens
    return 8 + int(hashlib.sha256(prompt.encode()).hexdigest()[:2], 16) % 57


def max_tokens_of(parameters: dict[str, str]) -> int | None:
    """The cap a unit puts on its answer (its `max_tokens` parameter), if it names one."""
    value = parameters.get("max_tokens")
    return int(value) if value else None
