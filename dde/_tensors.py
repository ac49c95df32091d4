"""Small tensor helpers shared by the models, the SDEs and the samplers."""
from __future__ import annotations

import tensorflow as tf


def as_column(v, like=None):
    """A scalar or [n] tensor as a column [n, 1] (or [1, 1]) for broadcasting against
    [n, d]; cast to `like`'s dtype when given."""
    v = tf.convert_to_tensor(v)
    if like is not None:
        v = tf.cast(v, like.dtype)
    return tf.reshape(v, [-1, 1])
