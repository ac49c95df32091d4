"""One cache of compiled functions for the whole package, weakly keyed by owner.

Compiled (`tf.function`) loops and steps are traced once per owner — a model, a target
density, a log-density function — and reused by later calls with other sizes, seeds or step
sizes. The cache holds its owners weakly: an entry disappears with its owner. For that, a
cached function must not capture its owner strongly (a value that refers to its key keeps
the key alive): build it over `weak(owner)` and call that inside.

    fn = compiled_function(model, ("log_density", d), lambda: tf.function(...))
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import weakref

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def weak(obj):
    """A zero-argument callable returning obj: a weak reference when obj allows one (a
    `WeakMethod` for bound methods), else obj itself held strongly."""
    if inspect.ismethod(obj):
        return weakref.WeakMethod(obj)
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def compiled_function(owner, key, build, *, companions=()):
    """The function cached for `owner` under `key`, built by `build()` on a miss.

    companions: further objects the function depends on (a proposal, the other models of a
    list); they are part of the key by identity and held weakly, so an entry whose companion
    died (and whose id may have been reused) is rebuilt. Owners that cannot be weakly
    referenced are not cached: `build()` each time. A bound method is cached on its object.
    """
    if inspect.ismethod(owner):  # key on the object; the method is part of the key
        owner, key = owner.__self__, (owner.__func__, key)
    full_key = (key, tuple(id(c) for c in companions))
    try:
        per_owner = _CACHE.setdefault(owner, {})
    except TypeError:
        return build()
    entry = per_owner.get(full_key)
    if entry is not None and all(r() is c for r, c in zip(entry[0], companions)):
        return entry[1]
    for stale in [k for k, (refs, _) in per_owner.items() if any(r() is None for r in refs)]:
        del per_owner[stale]  # a companion died: its function can never be used again
    fn = build()
    try:
        refs = tuple(weakref.ref(c) for c in companions)
    except TypeError:
        return fn
    per_owner[full_key] = (refs, fn)
    return fn


def cached_functions(owner) -> dict:
    """{key: function} cached for owner (for tests and diagnostics)."""
    if inspect.ismethod(owner):
        owner = owner.__self__
    try:
        entries = _CACHE.get(owner, {})
    except TypeError:
        return {}
    return {key: fn for (key, _), (_, fn) in entries.items()}


class _DropRetracingWarnings(logging.Filter):
    """Functions compiled per owner (and retraced for a new batch size) make TensorFlow warn
    'triggered tf.function retracing'; that is expected then, not a performance bug."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def expected_retracing():
    """Within this context TensorFlow's retracing warning is silenced (see above)."""
    import tensorflow as tf

    logger = tf.get_logger()
    filt = _DropRetracingWarnings()
    logger.addFilter(filt)
    try:
        yield
    finally:
        logger.removeFilter(filt)
