"""Name -> part tables that model families, stems and blocks add themselves to.

A config names parts by string (``model.family='resnet'``, ``model.stem='cifar'``,
``model.block='basic'``); the tables here turn a name into the part, and
``config_validation`` reads its choices from them, so a new part is one
decorated definition and nothing else to edit.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar('T')

# model.family -> the Flax module class; its dataclass fields are the config keys.
FAMILIES: dict[str, type] = {}


def register(table: dict[str, T], name: str) -> Callable[[T], T]:
    """Decorator: ``table[name] = the decorated part``; a name is taken once."""

    def add(part: T) -> T:
        if name in table:
            raise ValueError(f'{name!r} is registered twice.')
        table[name] = part
        return part

    return add
