"""The precision names every package accepts (Lightning's), framework-free so MLX and torch share them.

Canonical names: "32" (float32), "16-mixed" / "bf16-mixed" (float32 weights, half-precision compute) and
"16-true" / "bf16-true" (the whole model in half precision). As in Lightning, a bare "16" or "bf16" means
mixed precision: casting the weights themselves to float16 loses small updates and overflows within steps,
which is never what someone typing "16" wants.
"""

from __future__ import annotations

from common.errors import ConfigError

PRECISION_ALIASES = {
    "32": "32",
    "32-true": "32",
    "fp32": "32",
    "float32": "32",
    "16": "16-mixed",
    "fp16": "16-mixed",
    "float16": "16-mixed",
    "16-mixed": "16-mixed",
    "bf16": "bf16-mixed",
    "bfloat16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "16-true": "16-true",
    "bf16-true": "bf16-true",
}

PRECISION_CHOICES = "32 | 16-mixed | bf16-mixed | 16-true | bf16-true"


def canonical_precision(name: str | int) -> str:
    """The canonical name of a precision spelling; ConfigError naming the choices for anything else."""
    key = PRECISION_ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ConfigError(
            f"Unknown precision {name!r}; use one of: {PRECISION_CHOICES} (also 16 and bf16, which mean "
            "16-mixed and bf16-mixed)."
        )
    return key
