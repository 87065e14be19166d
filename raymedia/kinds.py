"""The one registry of model kinds and their CLI spellings.

Its own module, with no imports, so the config and the CLI can check kind names
without depending on the models package (``raymedia.models`` re-exports it).
"""

from __future__ import annotations

KINDS = ("two_tower", "sequence")       # the order models train, score and are listed in
ALIASES = {"two-tower": "two_tower"}    # CLI spellings


def kind(name: str) -> str:
    """The model kind ``name`` names (a kind or a CLI alias); ValueError naming the known ones."""
    name = ALIASES.get(name, name)
    if name not in KINDS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(names())}")
    return name


def names() -> list[str]:
    """Every accepted spelling: the kinds and their aliases (CLI choices, error messages)."""
    return [*KINDS, *ALIASES]
