"""The public surface of formula_foundry.acceptance is what its ``__all__`` says."""

from __future__ import annotations

import formula_foundry.acceptance as acceptance
from formula_foundry.acceptance import expression, registry


def test_all_is_the_public_surface() -> None:
    """``__all__`` is the union of the two modules' ``__all__``, each name bound to the module's object."""
    assert sorted(acceptance.__all__) == sorted([*expression.__all__, *registry.__all__])
    for name in expression.__all__:
        assert getattr(acceptance, name) is getattr(expression, name)
    for name in registry.__all__:
        assert getattr(acceptance, name) is getattr(registry, name)
