"""Old public names kept for one release: a module-level ``__getattr__`` that warns and returns the new object.

A module that renamed something writes::

    if TYPE_CHECKING:  # type checkers see the old name as the new one
        TabularViews = TableViews
    else:
        __getattr__ = renamed(__name__, {"TabularViews": TableViews})

``from vicreg.augment import TabularViews`` then gives ``TableViews`` with a :class:`DeprecationWarning` naming
the new name (PEP 562); type checkers keep reporting unknown names, since they never see the ``__getattr__``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["renamed"]


def renamed(module: str, aliases: Mapping[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving each old name of ``aliases`` as its new object, with a warning."""

    def __getattr__(name: str) -> Any:
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new = aliases[name]
        warnings.warn(
            f"{module}.{name} is renamed {module}.{new.__name__}; the old name goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return new

    return __getattr__
