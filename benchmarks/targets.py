"""Energies with exactly known log Z for the partition-function benchmarks
(`calibration.py`, `partition.py`): f = log p + c with p a normalized density with exact draws.

- gaussian: a correlated Gaussian (eigenvalues of the covariance from 0.2 to 3);
- mixture: three unequal components (weights 0.6, 0.3, 0.1), separated means, own covariances;
- banana: a rotated banana, each pair of coordinates (u₁, u₂ + b(u₁² − s²)) of a Gaussian u,
  rotated — a volume-preserving map, so Z = e^c;
- student_t: a correlated multivariate Student-t with 5 degrees of freedom.
"""
from __future__ import annotations

import math

import numpy as np

FAMILIES = ("gaussian", "mixture", "banana", "student_t")


def _rotation(d, rng):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _covariance(d, rng, lo=0.2, hi=3.0):
    q = _rotation(d, rng)
    return (q * np.geomspace(lo, hi, d)) @ q.T


class Target:
    """A target density p with log_prob (tensor level, float64) and exact draws."""

    def __init__(self, family: str, d: int, seed: int = 0):
        import tensorflow_probability as tfp

        tfd = tfp.distributions
        rng = np.random.default_rng([seed, d, FAMILIES.index(family)])
        self.family, self.d = family, d
        self.c = float(rng.uniform(-3, 3))
        if family == "gaussian":
            self.dist = tfd.MultivariateNormalTriL(
                np.zeros(d), np.linalg.cholesky(_covariance(d, rng)))
        elif family == "mixture":
            means = rng.normal(size=(3, d)) * 2.5
            trils = np.stack([np.linalg.cholesky(_covariance(d, rng, 0.2, 1.0)) for _ in range(3)])
            self.dist = tfd.MixtureSameFamily(
                tfd.Categorical(probs=np.array([0.6, 0.3, 0.1])),
                tfd.MultivariateNormalTriL(means, trils))
        elif family == "student_t":
            self.dist = tfd.MultivariateStudentTLinearOperator(
                5.0, np.zeros(d), tf_lower_triangular(np.linalg.cholesky(_covariance(d, rng))))
        elif family == "banana":
            self.rotation = _rotation(d, rng)
            self.scales = np.where(np.arange(d) % 2 == 0, 1.5, 0.5)
            self.bend = 0.3
        else:
            raise ValueError(f"Unknown family {family!r}.")

    def log_prob(self, x):
        import tensorflow as tf

        x = tf.cast(x, tf.float64)
        if self.family != "banana":
            return self.dist.log_prob(x)
        u = tf.linalg.matvec(tf.constant(self.rotation.T), x)  # x = R v, v = (u1, u2 + b(u1²−s²))
        d = self.d
        pairs = d // 2
        first = u[:, 0:2 * pairs:2]
        second = u[:, 1:2 * pairs:2] - self.bend * (tf.square(first)
                                                    - self.scales[0:2 * pairs:2] ** 2)
        parts = [first, second] + ([u[:, 2 * pairs:]] if d % 2 else [])
        z = tf.concat(parts, axis=1)
        s = np.concatenate([self.scales[0:2 * pairs:2], self.scales[1:2 * pairs:2],
                            self.scales[2 * pairs:]])
        return (-0.5 * tf.reduce_sum(tf.square(z / s), -1) - np.sum(np.log(s))
                - 0.5 * d * math.log(2 * math.pi))

    def sample(self, n, rng):
        if self.family != "banana":
            import tensorflow as tf

            seed = tf.constant(rng.integers(2**31 - 1, size=2), tf.int32)
            return np.asarray(self.dist.sample(n, seed=seed), np.float64)
        u = rng.normal(size=(n, self.d)) * self.scales
        v = u.copy()
        v[:, 1:2 * (self.d // 2):2] += self.bend * (u[:, 0:2 * (self.d // 2):2] ** 2
                                                   - self.scales[0:2 * (self.d // 2):2] ** 2)
        return v @ self.rotation.T

    def energy(self):
        c = self.c
        return lambda x: self.log_prob(x) + c


def tf_lower_triangular(m):
    import tensorflow as tf

    return tf.linalg.LinearOperatorLowerTriangular(tf.constant(m))
