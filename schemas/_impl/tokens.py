"""How many tokens a prompt counts for when no tokenizer has said.

One rule, used where a call is simulated (the stub provider) and where a
call is priced before it runs (billing's cost estimate for budget
admission), so the estimate and the stub's bill never drift apart.
"""

from __future__ import annotations

import hashlib
import math
from decimal import Decimal

__all__ = ["estimated_input_tokens", "estimated_output_tokens", "max_tokens_of",
           "weighted_tokens"]


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


def weighted_tokens(tokens_in: int, tokens_out: int, input_usd_per_1k: Decimal,
                    output_usd_per_1k: Decimal) -> int:
    """Tokens as a token rate limit counts them: input tokens, plus output tokens weighted by
    what one costs against an input token at the model's prices (1 when input is free).

    One rule for the estimate at grant time (prompt and `max_tokens`) and the
    correction from the invocation's real usage, so a model whose answers cost
    four times its prompts spends a tokens-per-minute limit four times as fast
    on output.
    """
    weight = output_usd_per_1k / input_usd_per_1k if input_usd_per_1k > 0 else Decimal(1)
    return tokens_in + math.ceil(Decimal(tokens_out) * weight)
