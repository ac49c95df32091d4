"""Toy data sets with exact densities, plain and smoothed by N(0, σ²I).

Eight 2-D sets in the scales of the FFJORD / DDE toy experiments (data roughly in [-4, 4]²) and
the 1-D mixture of three Gaussians of the probability-flow likelihood tutorial. Each set is a
precisely defined distribution p; `log_density(name, x, noise_std=σ)` returns

    log p_σ(x),   p_σ = p * N(0, σ²I),

the density a DDE trained at noise level σ approximates (σ = 0: the clean density).

==================== ======================================================================
name                 clean distribution p (sampler and density agree exactly)
==================== ======================================================================
8gaussians           equal mixture of N(c_k, s²I), c_k = 2√2·(cos kπ/4, sin kπ/4), s = 1/(2√2)
2spirals             ±(−n cos n, n sin n)/3 with n = 3π√U (each arm ½), + N(0, 0.1²I)
checkerboard         uniform on the 8 squares [2i, 2i+2]×[2j, 2j+2], i+j even, in [−4, 4]²
rings                circles of radius 3, 2.25, 1.5, 0.75 (¼ each), uniform angle, + N(0, 0.08²I)
moons                (2cos t − 1, 2sin t − 0.2) and (1 − 2cos t, 0.8 − 2sin t) (½ each),
                     t ~ U[0, π], + N(0, 0.2²I)
pinwheel             5 arms k: 2·R(−a)(r, τ)ᵀ, a = 2πk/5 + 0.25·eʳ, r ~ N(1, 0.3²), τ ~ N(0, 0.1²)
                     (R(θ) the rotation by θ)
swissroll            (t cos t, t sin t)/5, t ~ U[1.5π, 4.5π], + N(0, 0.2²I)
circles              circles of radius 3 and 1.5 (½ each), uniform angle, + N(0, 0.24²I)
gaussian_mixture_1d  0.4·N(−0.5, 0.25²) + 0.3·N(1, 0.25²) + 0.3·N(2, 0.5²)
==================== ======================================================================

The 1-D mixture takes the means, standard deviations and weights listed in the probability-flow
likelihood tutorial (whose own sampler ignores the weights and picks components uniformly).

How the smoothed log-density is computed (`method="analytic"`, the default), always in log
space (no underflow far from the data):

- Gaussian mixtures (8gaussians, gaussian_mixture_1d): closed form, variances s² + σ².
- rings, circles: closed form; a circle of radius R blurred by N(0, vI) has density
  exp(−(|x| − R)²/2v) · I₀ₑ(|x|R/v) / (2πv), I₀ₑ the exponentially scaled Bessel function.
- checkerboard: closed form, a sum over squares of products of normal-CDF differences
  (`log_ndtr`).
- 2spirals, moons, swissroll are continuous Gaussian mixtures `∫ ρ(u) N(x; c(u), s²I) du`;
  smoothing adds σ² to s². The integral over the curve parameter u uses composite 5-point
  Gauss–Legendre panels at most half a kernel standard deviation of path long. Against a 3×
  finer rule: < 2e-5 nats where log p_σ > max − 100, < 3e-3 nats down to log p_σ ≈ −800.
- pinwheel, σ > 0: τ integrates out in closed form, leaving a continuous mixture over r of
  Gaussians N(m(r), σ²I + 0.04·uuᵀ) (m = 2R(−a)(r, 0), u = R(−a)e₂), by the same quadrature
  (r truncated to 1 ± 8·0.3, mass lost < 1e-14; < 1e-4 nats where log p_σ > max − 100).
  σ = 0: the pushforward density N(r)N(τ)/|det ∂x/∂(r, τ)|, |det| = 4|1 + 0.25·eʳ·τ|, summed
  over all pre-images (bracketing, bisection and Newton on r).
Mixture components more than 40 nats below the largest one at a point are skipped.

`method="grid"` (and `grid_log_density`) is an independent numerical path: the clean density
is evaluated on a regular grid (spacing 0.02 in 2-D, 0.002 in 1-D) covering the data plus 10σ,
convolved with the Gaussian kernel (direct separable convolution, kernel truncated at 12σ;
sampled for the smooth sets, which needs σ = 0 or σ ≥ spacing; for the checkerboard the exact
cell averages with the kernel integrated over cells), and its log interpolated by cubic
splines (−inf outside the grid). Measured against the analytic path where p_σ > 1e-6·max p_σ:
< 1e-4 nats for the Gaussian mixtures, < 2e-3 nats for the curves and the checkerboard
(σ ≥ 5·spacing; interpolation cannot follow sharper edges), ~0.01–0.03 nats for the pinwheel,
whose clean density has integrable fold singularities in its far tails. The grid integrates to
1 within 1e-4.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage, special

from dde._validation import check_data, check_positive

__all__ = ["NAMES", "sample", "log_density", "score", "dimension", "plot_bounds",
           "grid_log_density", "describe"]

_LOG_2PI = math.log(2.0 * math.pi)
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(5)
# Quadrature panels per kernel standard deviation of path length (see module docstring).
_PANELS_PER_STD = 2.0
# Work arrays of at most this many entries (points × mixture components) per chunk.
_CHUNK_ENTRIES = 2_000_000
# Mixture components more than this many nats below the largest one at a point are skipped.
_PRUNE = 40.0
# Points are grouped in square cells of this many kernel standard deviations (at least
# _MIN_CELL wide) to skip far components; see _Mixture._blocks.
_CELL_STDS = 2.0
_MIN_CELL = 0.4


# ----------------------------------------------------------------------------- mixtures
class _Mixture:
    """Mixture Σ_i w_i N(m_i, v_i I + β_i u_i u_iᵀ) (|u_i| = 1), evaluated in log space.

    means [M, d], log_weights [M], var [M] (or a scalar) > 0, directions [M, d] and beta [M]
    ≥ 0 (optional: isotropic components). The log-density of component i is written as
    b_i + x·a_i − |x|²/(2v_i) − ½c_i(u_i·(x − m_i))², one matrix product for all components.
    """

    def __init__(self, means, log_weights, var, directions=None, beta=None):
        means = np.asarray(means, np.float64)
        self.means = means
        self.dim = means.shape[1]
        self.var = np.asarray(var, np.float64) * np.ones(len(means))
        self.common_var = bool(np.all(self.var == self.var[0]))
        log_norm = -0.5 * self.dim * (_LOG_2PI + np.log(self.var))
        self.directions, self.beta = None, np.zeros(len(means))
        if directions is not None:
            self.directions = np.asarray(directions, np.float64)
            self.beta = np.asarray(beta, np.float64) * np.ones(len(means))
            self.coef = self.beta / (self.var * (self.var + self.beta))
            self.mean_dot_dir = np.sum(means * self.directions, axis=1)
            log_norm = log_norm - 0.5 * np.log1p(self.beta / self.var)
        self.a = (means / self.var[:, None]).T
        self.b = (np.asarray(log_weights, np.float64) + log_norm
                  - 0.5 * np.sum(means ** 2, axis=1) / self.var)

    def _logits(self, x, sq, comp):
        """Log-densities of components `comp` at x: [n, len(comp)] (without −|x|²/(2v) when v
        is common), and u·(x − m)."""
        logits = x @ self.a[:, comp]
        logits += self.b[comp]
        if not self.common_var:
            logits -= np.outer(sq, 0.5 / self.var[comp])
        proj = None
        if self.directions is not None:
            proj = x @ self.directions[comp].T
            proj -= self.mean_dot_dir[comp]
            logits += 0.5 * self.coef[comp] * proj ** 2
        return logits, proj

    def _blocks(self, x):
        """Yield (point indices, component indices): spatially compact groups of points and
        the components whose weighted density there can come within _PRUNE nats of the
        largest one (each skipped component adds less than e^-_PRUNE relative)."""
        m = len(self.b)
        if m <= 256:
            step = max(1, _CHUNK_ENTRIES // m)
            for i in range(0, len(x), step):
                yield np.arange(i, min(i + step, len(x))), slice(None)
            return
        peak = self.b + 0.5 * np.sum(self.means ** 2, axis=1) / self.var  # log w + log norm
        inv_sd = 1.0 / np.sqrt(self.var)  # largest singular value of C^(-1/2)
        cell = max(_CELL_STDS * math.sqrt(float(self.var.min())), _MIN_CELL)
        _, inverse = np.unique(np.floor(x / cell).astype(np.int64), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        for idx in np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1):
            pts = x[idx]
            centre = pts.mean(axis=0, keepdims=True)
            radius = float(np.sqrt(np.max(np.sum((pts - centre) ** 2, axis=1))))
            # Mahalanobis distance at the centre ± radius·|C^(-1/2)| bounds it in the group.
            sq = np.sum(centre ** 2, axis=1)
            logits, _ = self._logits(centre, sq, slice(None))
            if self.common_var:
                logits -= 0.5 * sq / self.var[0]
            dist = np.sqrt(np.maximum(2.0 * (peak - logits[0]), 0.0))
            upper = peak - 0.5 * np.maximum(dist - radius * inv_sd, 0.0) ** 2
            lower = np.max(peak - 0.5 * (dist + radius * inv_sd) ** 2)
            comp = np.flatnonzero(upper >= lower - _PRUNE)
            step = max(1, _CHUNK_ENTRIES // len(comp))
            for i in range(0, len(idx), step):
                yield idx[i:i + step], comp

    def log_pdf(self, x):
        out = np.empty(len(x))
        for idx, comp in self._blocks(x):
            xc = x[idx]
            sq = np.sum(xc ** 2, axis=1)
            logits, _ = self._logits(xc, sq, comp)
            top = logits.max(axis=1, keepdims=True)
            logits -= top
            np.exp(logits, out=logits)
            res = np.log(logits.sum(axis=1)) + top[:, 0]
            if self.common_var:
                res -= 0.5 * sq / self.var[0]
            out[idx] = res
        return out

    def score(self, x):
        """∇ₓ log p(x) = −Σ_i r_i(x) C_i⁻¹(x − m_i), r the posterior responsibilities."""
        out = np.empty_like(x)
        for idx, comp in self._blocks(x):
            xc = x[idx]
            logits, proj = self._logits(xc, np.sum(xc ** 2, axis=1), comp)
            logits -= logits.max(axis=1, keepdims=True)
            r = np.exp(logits)
            r /= r.sum(axis=1, keepdims=True)
            a = r / self.var[comp]
            g = a @ self.means[comp] - xc * a.sum(axis=1, keepdims=True)
            if proj is not None:
                g += (r * self.coef[comp] * proj) @ self.directions[comp]
            out[idx] = g
        return out


def _quadrature(u0, u1, speed, min_panels, per_std=None):
    """Composite Gauss–Legendre nodes and weights on [u0, u1]; panels equal in ∫ speed du.

    speed(u) ≥ 0 is the path length per unit u measured in kernel standard deviations.
    """
    u = np.linspace(u0, u1, 4097)
    s = speed(u)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (s[1:] + s[:-1]) * np.diff(u))])
    # Each panel covers at most 1/per_std kernel std of path and (u1 − u0)/min_panels.
    per_std = _PANELS_PER_STD if per_std is None else per_std
    cum = cum * per_std + min_panels * (u - u0) / (u1 - u0)
    panels = int(math.ceil(cum[-1]))
    edges = np.interp(np.linspace(0.0, cum[-1], panels + 1), cum, u)
    mid, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * np.diff(edges)
    nodes = (mid[:, None] + half[:, None] * _GL_NODES[None, :]).ravel()
    weights = (half[:, None] * _GL_WEIGHTS[None, :]).ravel()
    return nodes, weights


# ------------------------------------------------------------------------------ the sets
class _ToySet:
    """A toy distribution: sampler, analytic (smoothed) log-density and score."""

    name: str
    dim: int
    description: str
    # Box (per dimension) outside which the clean density is < 1e-13 of its maximum.
    box: tuple
    grid_spacing: float
    # Whether `clean_grid_log_density` returns cell averages (True) or point values.
    cell_averages = False

    def sample(self, n, rng):
        raise NotImplementedError

    def log_density(self, x, sigma):
        raise NotImplementedError

    def score(self, x, sigma):
        raise NotImplementedError

    def clean_grid_log_density(self, axes):
        """log of the clean density at the cell centres of a regular grid (cell averages
        where the density is discontinuous). axes: per-dimension centres."""
        mesh = np.meshgrid(*axes, indexing="ij")
        pts = np.stack([m.ravel() for m in mesh], axis=1)
        return self.log_density(pts, 0.0).reshape(mesh[0].shape)


class _GaussianMixtureSet(_ToySet):
    def __init__(self, name, means, stds, weights, description):
        self.name, self.description = name, description
        self.means = np.asarray(means, np.float64)
        self.stds = np.asarray(stds, np.float64) * np.ones(len(self.means))
        self.weights = np.asarray(weights, np.float64) * np.ones(len(self.means))
        self.weights = self.weights / self.weights.sum()
        self.dim = self.means.shape[1]
        reach = np.abs(self.means) + 8.0 * self.stds[:, None]
        self.box = tuple((-float(r), float(r)) for r in reach.max(axis=0))
        self.grid_spacing = 0.02 if self.dim == 2 else 0.002

    def mixture(self, sigma):
        return _Mixture(self.means, np.log(self.weights), self.stds ** 2 + sigma ** 2)

    def sample(self, n, rng):
        k = rng.choice(len(self.means), size=n, p=self.weights)
        return self.means[k] + self.stds[k, None] * rng.standard_normal((n, self.dim))

    def log_density(self, x, sigma):
        return self.mixture(sigma).log_pdf(x)

    def score(self, x, sigma):
        return self.mixture(sigma).score(x)


class _Arm:
    """A piece of curve c(u), u ∈ [u0, u1] with parameter density ∝ rho(u), of mass `weight`."""

    def __init__(self, weight, u0, u1, curve, dcurve, rho=None, sample_u=None):
        self.weight, self.u0, self.u1 = weight, u0, u1
        self.curve, self.dcurve = curve, dcurve
        self.rho = rho if rho is not None else (lambda u: np.ones_like(u))
        self.sample_u = sample_u if sample_u is not None else (
            lambda rng, k: rng.uniform(u0, u1, size=k))


class _CurveSet(_ToySet):
    """Σ_arms weight · ∫ ρ(u) N(x; c(u), s²I) du: a curve blurred by isotropic noise s."""

    def __init__(self, name, arms, noise, description):
        self.name, self.arms, self.noise, self.description = name, arms, noise, description
        self.dim = 2
        self.grid_spacing = 0.02
        pts = np.concatenate([a.curve(np.linspace(a.u0, a.u1, 512)) for a in arms])
        reach = np.abs(pts).max(axis=0) + 8.0 * noise
        self.box = tuple((-float(r), float(r)) for r in reach)

    @functools.lru_cache(maxsize=16)
    def mixture(self, sigma):
        var = self.noise ** 2 + sigma ** 2
        tau = math.sqrt(var)
        means, logw = [], []
        for arm in self.arms:
            def speed(u, arm=arm):
                return np.linalg.norm(arm.dcurve(u), axis=1) / tau
            nodes, w = _quadrature(arm.u0, arm.u1, speed, min_panels=16)
            w = w * arm.rho(nodes)
            means.append(arm.curve(nodes))
            logw.append(np.log(w / w.sum() * arm.weight))
        return _Mixture(np.concatenate(means), np.concatenate(logw), var)

    def sample(self, n, rng):
        weights = np.array([a.weight for a in self.arms])
        k = rng.choice(len(self.arms), size=n, p=weights / weights.sum())
        out = np.empty((n, 2))
        for i, arm in enumerate(self.arms):
            idx = np.flatnonzero(k == i)
            out[idx] = arm.curve(arm.sample_u(rng, len(idx)))
        return out + self.noise * rng.standard_normal((n, 2))

    def log_density(self, x, sigma):
        return self.mixture(float(sigma)).log_pdf(x)

    def score(self, x, sigma):
        return self.mixture(float(sigma)).score(x)


class _RingSet(_ToySet):
    """Σ_k w_k · (uniform on the circle of radius R_k) * N(0, s²I): closed form with Bessel I₀,

        ∫ N(x; R(cos θ, sin θ), vI) dθ/2π = exp(−(|x| − R)²/2v) · ive(0, |x|R/v) / (2πv).
    """

    def __init__(self, name, radii, weights, noise, description):
        self.name, self.description, self.dim, self.grid_spacing = name, description, 2, 0.02
        self.radii = np.asarray(radii, np.float64)
        self.weights = np.asarray(weights, np.float64) / np.sum(weights)
        self.noise = noise
        reach = float(self.radii.max() + 8.0 * noise)
        self.box = ((-reach, reach), (-reach, reach))

    def sample(self, n, rng):
        k = rng.choice(len(self.radii), size=n, p=self.weights)
        theta = rng.uniform(0.0, 2.0 * np.pi, size=n)
        circle = self.radii[k, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        return circle + self.noise * rng.standard_normal((n, 2))

    def _logits(self, x, sigma):
        v = self.noise ** 2 + sigma ** 2
        norm = np.hypot(x[:, 0], x[:, 1])[:, None]
        z = norm * self.radii / v
        logits = (np.log(self.weights) - np.log(2.0 * np.pi * v)
                  - 0.5 * (norm - self.radii) ** 2 / v + np.log(special.ive(0, z)))
        return logits, norm, z, v

    def log_density(self, x, sigma):
        return special.logsumexp(self._logits(x, sigma)[0], axis=1)

    def score(self, x, sigma):
        logits, norm, z, v = self._logits(x, sigma)
        r = np.exp(logits - special.logsumexp(logits, axis=1, keepdims=True))
        # d/d|x| log p_k = −|x|/v + (R/v)·I₁(z)/I₀(z); the radial unit vector is x/|x|.
        # (I₁/I₀)(z)/|x| → R/(2v) as |x| → 0.
        small = norm < 1e-9
        ratio = np.where(small, self.radii / (2.0 * v),
                         special.ive(1, z) / special.ive(0, z) / np.where(small, 1.0, norm))
        factor = np.sum(r * (self.radii / v * ratio - 1.0 / v), axis=1)
        return factor[:, None] * x


class _PinwheelSet(_ToySet):
    """FFJORD's pinwheel: arm k is 2·R(−a)(r, τ)ᵀ with a = θ_k + rate·eʳ."""

    def __init__(self, arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
        self.name = "pinwheel"
        self.dim, self.grid_spacing = 2, 0.02
        self.arms, self.radial_std, self.tangential_std, self.rate = (arms, radial_std,
                                                                      tangential_std, rate)
        self.thetas = 2.0 * np.pi * np.arange(arms) / arms
        self.r_range = (1.0 - 8.0 * radial_std, 1.0 + 8.0 * radial_std)
        reach = 2.0 * math.hypot(self.r_range[1], 8.0 * tangential_std)
        self.box = ((-reach, reach), (-reach, reach))
        self.description = (f"{arms} arms 2·R(−a)(r, τ), a = 2πk/{arms} + {rate}·exp(r), "
                            f"r ~ N(1, {radial_std}²), τ ~ N(0, {tangential_std}²)")

    def _map(self, k, r, t):
        a = self.thetas[k] + self.rate * np.exp(r)
        c, s = np.cos(a), np.sin(a)
        return 2.0 * np.stack([c * r + s * t, -s * r + c * t], axis=-1)

    def sample(self, n, rng):
        k = rng.integers(0, self.arms, size=n)
        r = 1.0 + self.radial_std * rng.standard_normal(n)
        t = self.tangential_std * rng.standard_normal(n)
        return self._map(k, r, t)

    @functools.lru_cache(maxsize=16)
    def mixture(self, sigma):
        """σ > 0: τ integrates out, N(x; m(r), σ²I + β u uᵀ), m = 2R(−a)(r, 0), u = R(−a)e₂."""
        var, beta = sigma ** 2, (2.0 * self.tangential_std) ** 2

        def speed(r):
            # |m'(r)| = 2|(1, −a'r)| in the rotated frame; scale each part by its kernel std.
            ar = self.rate * np.exp(r) * r
            return 2.0 * np.sqrt(1.0 / var + ar ** 2 / (var + beta))

        nodes, w = _quadrature(*self.r_range, speed, min_panels=24,
                               per_std=0.5 * _PANELS_PER_STD)
        w = w * np.exp(-0.5 * ((nodes - 1.0) / self.radial_std) ** 2)
        logw = np.log(w / w.sum() / self.arms)
        means, dirs = [], []
        for k in range(self.arms):
            a = self.thetas[k] + self.rate * np.exp(nodes)
            means.append(self._map(k, nodes, np.zeros_like(nodes)))
            dirs.append(np.stack([np.sin(a), np.cos(a)], axis=1))
        return _Mixture(np.concatenate(means), np.tile(logw, self.arms), var,
                        np.concatenate(dirs), beta)

    def _clean_log_density(self, x, brackets=128, bisections=16, newton_steps=3):
        """Pushforward density at σ = 0, summing over all pre-images (r, τ) of x.

        x/2 = R(−a)(r, τ) means arg(x) = arg(r, τ) − a(r), so the pre-images on arm k are the
        roots of g(r) = r − ρ cos(ψ + θ_k + rate·eʳ) (ρ, ψ the polar coordinates of x/2), with
        τ = ρ sin(ψ + θ_k + rate·eʳ). Roots are bracketed on a grid over r ∈ 1 ± 8·0.3, then
        refined by bisection and safeguarded Newton steps (g' = 1 + rate·eʳ·τ).
        """
        y = 0.5 * x
        rho = np.hypot(y[:, 0], y[:, 1])
        psi = np.arctan2(y[:, 1], y[:, 0])
        out = np.full(len(x), -np.inf)
        r_grid = np.linspace(*self.r_range, brackets)
        a_grid = self.rate * np.exp(r_grid)
        step = max(1, _CHUNK_ENTRIES // brackets)
        const = (-_LOG_2PI - math.log(self.radial_std * self.tangential_std) - math.log(4.0)
                 - math.log(self.arms))
        for k in range(self.arms):
            for i in range(0, len(x), step):
                sl = slice(i, min(i + step, len(x)))
                vals = r_grid - rho[sl, None] * np.cos(psi[sl, None] + self.thetas[k] + a_grid)
                neg = vals < 0
                pi, bj = np.nonzero(neg[:, :-1] != neg[:, 1:])
                if len(pi) == 0:
                    continue
                idx = pi + i
                rho_i, phase = rho[idx], psi[idx] + self.thetas[k]
                lo, hi = r_grid[bj], r_grid[bj + 1]
                lo_neg = neg[pi, bj]
                for _ in range(bisections):
                    mid = 0.5 * (lo + hi)
                    mid_neg = mid - rho_i * np.cos(phase + self.rate * np.exp(mid)) < 0
                    move_lo = mid_neg == lo_neg
                    lo = np.where(move_lo, mid, lo)
                    hi = np.where(move_lo, hi, mid)
                r = 0.5 * (lo + hi)
                for _ in range(newton_steps):
                    ar = self.rate * np.exp(r)
                    g = r - rho_i * np.cos(phase + ar)
                    dg = 1.0 + rho_i * np.sin(phase + ar) * ar
                    with np.errstate(divide="ignore", invalid="ignore"):
                        new = r - g / dg
                    r = np.where((new >= lo) & (new <= hi), new, r)
                ar = self.rate * np.exp(r)
                t = rho_i * np.sin(phase + ar)
                with np.errstate(divide="ignore"):
                    logp = (const - 0.5 * ((r - 1.0) / self.radial_std) ** 2
                            - 0.5 * (t / self.tangential_std) ** 2
                            - np.log(np.abs(1.0 + ar * t)))
                np.logaddexp.at(out, idx, logp)
        return out

    def log_density(self, x, sigma):
        if sigma == 0:
            return self._clean_log_density(x)
        return self.mixture(float(sigma)).log_pdf(x)

    def score(self, x, sigma):
        if sigma == 0:
            raise ValueError("The score of the clean pinwheel density is not available; pass "
                             "noise_std > 0.")
        return self.mixture(float(sigma)).score(x)


def _log_ndtr_diff(a, b):
    """log(Φ(b) − Φ(a)) for a < b, accurate in both tails."""
    flip = a > 0
    a, b = np.where(flip, -b, a), np.where(flip, -a, b)
    la, lb = special.log_ndtr(a), special.log_ndtr(b)
    d = la - lb  # < 0
    return lb + np.where(d > -math.log(2.0), np.log(-np.expm1(np.minimum(d, -1e-300))),
                         np.log1p(-np.exp(d)))


class _CheckerboardSet(_ToySet):
    """Uniform on the squares [2i, 2i+2]×[2j, 2j+2], i, j ∈ {−2, −1, 0, 1}, i + j even."""

    def __init__(self):
        self.name, self.dim, self.grid_spacing = "checkerboard", 2, 0.02
        self.box = ((-4.0, 4.0), (-4.0, 4.0))
        self.description = ("uniform on the 8 squares [2i, 2i+2]×[2j, 2j+2] (i + j even) "
                            "of [−4, 4]²")
        idx = np.arange(-2, 2)
        self.parity = (idx[:, None] + idx[None, :]) % 2 == 0  # [4, 4] occupied squares
        self.lower = 2.0 * idx

    def sample(self, n, rng):
        cells = np.argwhere(self.parity)
        k = rng.integers(0, len(cells), size=n)
        return self.lower[cells[k]] + 2.0 * rng.uniform(size=(n, 2))

    def _axis_terms(self, x, sigma):
        """log of the per-axis factor of each interval [2i, 2i+2]: [n, 4]."""
        lo, hi = self.lower[None, :], self.lower[None, :] + 2.0
        if sigma == 0:
            inside = (x[:, None] >= lo) & (x[:, None] < hi)
            return np.where(inside, 0.0, -np.inf)
        return _log_ndtr_diff((lo - x[:, None]) / sigma, (hi - x[:, None]) / sigma)

    def _pair_logits(self, x, sigma):
        a, b = self._axis_terms(x[:, 0], sigma), self._axis_terms(x[:, 1], sigma)
        logits = a[:, :, None] + b[:, None, :] - math.log(32.0)
        return np.where(self.parity[None], logits, -np.inf).reshape(len(x), -1)

    def log_density(self, x, sigma):
        with np.errstate(divide="ignore"):
            return special.logsumexp(self._pair_logits(x, sigma), axis=1)

    def score(self, x, sigma):
        if sigma == 0:
            raise ValueError("The score of the clean checkerboard density is not defined at "
                             "the square edges; pass noise_std > 0.")
        logits = self._pair_logits(x, sigma)
        r = np.exp(logits - special.logsumexp(logits, axis=1, keepdims=True)).reshape(-1, 4, 4)
        out = np.empty_like(x)
        for axis in range(2):
            xa = x[:, axis][:, None]
            lo, hi = (self.lower[None, :] - xa) / sigma, (self.lower[None, :] + 2.0 - xa) / sigma
            log_mass = _log_ndtr_diff(lo, hi)
            log_phi = lambda z: -0.5 * z ** 2 - 0.5 * _LOG_2PI  # noqa: E731
            dlog = (np.exp(log_phi(lo) - log_mass) - np.exp(log_phi(hi) - log_mass)) / sigma
            weights = r.sum(axis=2) if axis == 0 else r.sum(axis=1)
            out[:, axis] = np.sum(weights * dlog, axis=1)
        return out

    cell_averages = True

    def clean_grid_log_density(self, axes):
        """Exact cell averages of the clean density (the squares' edges cut through cells)."""
        fractions = []
        for centres in axes:
            h = centres[1] - centres[0]
            lo, hi = centres[:, None] - h / 2, centres[:, None] + h / 2
            overlap = np.clip(np.minimum(hi, self.lower + 2.0) - np.maximum(lo, self.lower),
                              0.0, None)
            fractions.append(overlap / h)  # [cells, 4]
        avg = fractions[0] @ self.parity.astype(float) @ fractions[1].T / 32.0
        with np.errstate(divide="ignore"):
            return np.log(avg)


def _spiral_arm(sign):
    top = 3.0 * np.pi
    return _Arm(
        0.5, 0.0, top,
        lambda n: sign * np.stack([-n * np.cos(n), n * np.sin(n)], axis=-1) / 3.0,
        lambda n: sign * np.stack([n * np.sin(n) - np.cos(n), np.sin(n) + n * np.cos(n)],
                                  axis=-1) / 3.0,
        rho=lambda n: n,  # n = 3π√U has density 2n / (3π)²
        sample_u=lambda rng, k: top * np.sqrt(rng.uniform(size=k)))


def _make_sets():
    r2 = math.sqrt(2.0)
    angles = np.arange(8) * np.pi / 4
    sets = [
        _GaussianMixtureSet(
            "8gaussians", 2 * r2 * np.stack([np.cos(angles), np.sin(angles)], axis=1),
            1.0 / (2 * r2), np.ones(8),
            "equal mixture of N(c_k, s²I), c_k = 2√2·(cos kπ/4, sin kπ/4), s = 1/(2√2)"),
        _CurveSet("2spirals", [_spiral_arm(1.0), _spiral_arm(-1.0)], 0.1,
                  "±(−n cos n, n sin n)/3, n = 3π√U, + N(0, 0.1²I)"),
        _CheckerboardSet(),
        _RingSet("rings", [3.0, 2.25, 1.5, 0.75], np.ones(4), 0.08,
                 "circles of radius 3, 2.25, 1.5, 0.75 (¼ each), uniform angle, "
                 "+ N(0, 0.08²I)"),
        _CurveSet("moons", [
            _Arm(0.5, 0.0, np.pi,
                 lambda t: np.stack([2 * np.cos(t) - 1, 2 * np.sin(t) - 0.2], axis=-1),
                 lambda t: np.stack([-2 * np.sin(t), 2 * np.cos(t)], axis=-1)),
            _Arm(0.5, 0.0, np.pi,
                 lambda t: np.stack([1 - 2 * np.cos(t), 0.8 - 2 * np.sin(t)], axis=-1),
                 lambda t: np.stack([2 * np.sin(t), -2 * np.cos(t)], axis=-1)),
        ], 0.2, "(2cos t − 1, 2sin t − 0.2) and (1 − 2cos t, 0.8 − 2sin t), t ~ U[0, π], "
                "+ N(0, 0.2²I)"),
        _PinwheelSet(),
        _CurveSet("swissroll", [
            _Arm(1.0, 1.5 * np.pi, 4.5 * np.pi,
                 lambda t: np.stack([t * np.cos(t), t * np.sin(t)], axis=-1) / 5.0,
                 lambda t: np.stack([np.cos(t) - t * np.sin(t), np.sin(t) + t * np.cos(t)],
                                    axis=-1) / 5.0)],
                  0.2, "(t cos t, t sin t)/5, t ~ U[1.5π, 4.5π], + N(0, 0.2²I)"),
        _RingSet("circles", [3.0, 1.5], np.ones(2), 0.24,
                 "circles of radius 3 and 1.5 (½ each), uniform angle, + N(0, 0.24²I)"),
        _GaussianMixtureSet(
            "gaussian_mixture_1d", [[-0.5], [1.0], [2.0]], [0.25, 0.25, 0.5], [0.4, 0.3, 0.3],
            "0.4·N(−0.5, 0.25²) + 0.3·N(1, 0.25²) + 0.3·N(2, 0.5²)"),
    ]
    return {s.name: s for s in sets}


_SETS = _make_sets()

#: Names of the toy data sets.
NAMES = tuple(_SETS)


# ------------------------------------------------------------------------------- public API
def _get(name) -> _ToySet:
    if not isinstance(name, str):
        raise TypeError(f"The data set name must be a string, got {name!r}.")
    if name not in _SETS:
        raise ValueError(f"Unknown toy data set {name!r}; known: {', '.join(NAMES)}.")
    return _SETS[name]


def _check_noise_std(noise_std) -> float:
    return float(check_positive(noise_std, "noise_std", allow_zero=True))


def _check_spacing(ds, spacing) -> float:
    return ds.grid_spacing if spacing is None else float(check_positive(spacing, "spacing"))


def _check_points(ds, x):
    return check_data(x, name="x", n_features=ds.dim, owner=f"the toy set {ds.name!r}",
                      dtype=np.float64)


def dimension(name: str) -> int:
    """Dimension d of the data set `name` (2, or 1 for gaussian_mixture_1d)."""
    return _get(name).dim


def describe(name: str) -> str:
    """One-line definition of the clean distribution of `name`."""
    return _get(name).description


def plot_bounds(name: str) -> tuple:
    """A plotting box ((lo, hi),) * d holding essentially all the data: [−4, 4]² for the 2-D
    sets (where the smoothed densities are usually compared) and (−2, 4) for the 1-D mixture."""
    ds = _get(name)
    return ((-2.0, 4.0),) if ds.dim == 1 else ((-4.0, 4.0), (-4.0, 4.0))


def sample(name: str, n: int, seed=None) -> np.ndarray:
    """`n` i.i.d. samples of the data set `name`: float32 array [n, d].

    seed: an int, a `numpy.random.Generator`/`SeedSequence`, or None (fresh entropy); the same
    seed gives the same array.
    """
    ds = _get(name)
    n = check_positive(n, "n", integer=True)
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(ds.sample(int(n), rng), dtype=np.float32)


def log_density(name: str, x, noise_std: float = 0.0, method: str = "analytic",
                grid_spacing: float | None = None) -> np.ndarray:
    """log p_σ(x) of the data set `name` smoothed by N(0, σ²I), σ = noise_std: [n, d] → [n].

    method: "analytic" (closed form or fine quadrature, see the module docstring) or "grid"
    (numerical convolution on a grid of `grid_spacing`, see `grid_log_density`; cubic-spline
    interpolation, −inf outside the grid). Returns float64.
    """
    ds = _get(name)
    sigma = _check_noise_std(noise_std)
    x = _check_points(ds, x)
    if method == "analytic":
        return ds.log_density(x, sigma)
    if method == "grid":
        h = _check_spacing(ds, grid_spacing)
        return _grid_interpolate(ds.name, sigma, h, x)
    raise ValueError(f"Unknown method {method!r}; use 'analytic' or 'grid'.")


def score(name: str, x, noise_std: float = 0.0) -> np.ndarray:
    """∇ₓ log p_σ(x) of the smoothed data set: [n, d] → [n, d] float64.

    The true denoiser is E[x | x̃] = x̃ + σ²·score(x̃). checkerboard and pinwheel need σ > 0.
    """
    ds = _get(name)
    sigma = _check_noise_std(noise_std)
    return ds.score(_check_points(ds, x), sigma)


def grid_log_density(name: str, noise_std: float = 0.0, spacing: float | None = None):
    """Numerical log p_σ on a regular grid: returns (axes, log_p).

    axes: tuple of d arrays of cell centres; log_p: array of shape [len(a) for a in axes].
    The clean density on the grid is convolved with the Gaussian kernel sampled at the
    spacing (default 0.02 in 2-D, 0.002 in 1-D; noise_std must be 0 or ≥ spacing). The grid
    covers the data (clean density > ~1e-13 of its maximum) plus 8σ. Cells whose density
    underflows hold log(2.2e-308) ≈ −708.
    """
    ds = _get(name)
    sigma = _check_noise_std(noise_std)
    h = _check_spacing(ds, spacing)
    axes, logp, _ = _grid(ds.name, sigma, h)
    return axes, logp.copy()


@functools.lru_cache(maxsize=8)
def _grid(name, sigma, h):
    """(axes, log p_σ on the grid, its cubic-spline coefficients), cached."""
    ds = _SETS[name]
    if 0 < sigma < h and not ds.cell_averages:
        raise ValueError(f"noise_std ({sigma}) must be 0 or at least the grid spacing ({h}) "
                         "for the grid method; pass a smaller spacing.")
    axes = []
    for lo, hi in ds.box:  # cell edges on multiples of h
        lo, hi = math.floor((lo - 10.0 * sigma) / h), math.ceil((hi + 10.0 * sigma) / h)
        axes.append(h * (np.arange(lo, hi) + 0.5))
    clean = ds.clean_grid_log_density(axes)
    top = np.max(clean)
    p = np.exp(clean - top)
    if sigma > 0:
        radius = int(math.ceil(12.0 * sigma / h))
        offsets = np.arange(-radius, radius + 1) * h / sigma
        if ds.cell_averages:  # the kernel's mass over each cell: exact for cell-wise constant p
            kernel = np.diff(special.ndtr(np.append(offsets - 0.5 * h / sigma,
                                                    offsets[-1] + 0.5 * h / sigma)))
        else:  # point values of a smooth p: the sampled kernel (spectrally accurate)
            kernel = np.exp(-0.5 * offsets ** 2)
            kernel /= kernel.sum()
        for axis in range(ds.dim):
            p = ndimage.convolve1d(p, kernel, axis=axis, mode="constant", cval=0.0)
    logp = np.log(np.maximum(p, np.finfo(float).tiny)) + top
    return tuple(axes), logp, ndimage.spline_filter(logp, order=3, mode="nearest")


def _grid_interpolate(name, sigma, h, x):
    """Cubic-spline interpolation of the grid log-density at x [n, d]; −inf outside the grid."""
    axes, logp, coeffs = _grid(name, sigma, h)
    coords = np.stack([(x[:, j] - axes[j][0]) / h for j in range(len(axes))])
    values = ndimage.map_coordinates(coeffs, coords, order=3, mode="nearest", prefilter=False)
    inside = np.all((coords >= 0) & (coords <= np.array(logp.shape)[:, None] - 1), axis=0)
    return np.where(inside, values, -np.inf)
