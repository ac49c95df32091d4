"""Name → object tables behind every user-facing choice of the package (proposals, samplers,
AIS schedules and kernels, SDEs, data-set families).

One line registers an entry; the command line takes its `choices` from the table and error
messages list its names, so adding a proposal or a sampler is one file plus one line:

    PROPOSALS = Registry("proposal")

    @PROPOSALS.register("gaussian")
    def gaussian_proposal(x_train, ...): ...

    PROPOSALS.lookup("gaussain")   # ValueError: Unknown proposal 'gaussain'; expected one of …
"""
from __future__ import annotations

from collections.abc import Mapping


class Registry(Mapping):
    """An ordered, read-mostly mapping name → object of one kind (e.g. "proposal")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict = {}

    def register(self, name: str, obj=None, *, replace: bool = False):
        """Register `obj` under `name` (or use as a decorator: `@REG.register("name")`).

        Registering a taken name raises ValueError unless `replace=True`."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"A {self.kind} name must be a non-empty string, got {name!r}.")

        def add(target):
            if name in self._entries and not replace:
                raise ValueError(f"A {self.kind} named {name!r} is already registered.")
            self._entries[name] = target
            return target

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests and plug-ins)."""
        self._entries.pop(name, None)

    def lookup(self, name):
        """The object registered under `name`; ValueError naming the known names if absent."""
        if not isinstance(name, str):
            raise TypeError(f"A {self.kind} must be named by a string, one of "
                            f"{list(self._entries)}; got {name!r}.")
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"Unknown {self.kind} {name!r}; expected one of "
                             f"{list(self._entries)}.") from None

    def names(self) -> tuple:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __getitem__(self, name):
        return self._entries[name]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def __repr__(self):
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
