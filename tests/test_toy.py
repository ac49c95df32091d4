"""Tests of dde.datasets.toy: seeded samplers, exact smoothed log-densities and scores."""
import math

import numpy as np
import pytest
from scipy import stats

from dde.datasets import toy

NAMES = ("8gaussians", "2spirals", "checkerboard", "rings", "moons", "pinwheel", "swissroll",
         "circles", "gaussian_mixture_1d")
TWO_D = tuple(n for n in NAMES if n != "gaussian_mixture_1d")


def _grid(lo, hi, h, d):
    """Cell centres of a regular grid on [lo, hi]^d with spacing h: [m, d]."""
    axis = lo + h * (np.arange(int(round((hi - lo) / h))) + 0.5)
    mesh = np.meshgrid(*([axis] * d), indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


# ---------------------------------------------------------------------------- the catalogue
def test_names_and_dimensions():
    assert toy.NAMES == NAMES
    assert [toy.dimension(n) for n in NAMES] == [2] * 8 + [1]
    assert all(isinstance(toy.describe(n), str) and toy.describe(n) for n in NAMES)
    assert toy.plot_bounds("moons") == ((-4.0, 4.0), (-4.0, 4.0))
    assert len(toy.plot_bounds("gaussian_mixture_1d")) == 1


@pytest.mark.parametrize("call", [
    lambda: toy.sample("nope", 10),
    lambda: toy.dimension("nope"),
    lambda: toy.log_density("nope", np.zeros((1, 2))),
    lambda: toy.score("nope", np.zeros((1, 2))),
    lambda: toy.grid_log_density("nope"),
])
def test_unknown_name_lists_the_known_ones(call):
    with pytest.raises(ValueError, match="Unknown toy data set 'nope'; known: 8gaussians, "
                                         "2spirals, checkerboard"):
        call()


def test_name_must_be_a_string():
    with pytest.raises(TypeError, match="name must be a string"):
        toy.sample(3, 10)


# ------------------------------------------------------------------------------ samplers
@pytest.mark.parametrize("name", NAMES)
def test_sample_is_seeded_with_the_right_shape(name):
    a = toy.sample(name, 300, seed=3)
    b = toy.sample(name, 300, seed=3)
    c = toy.sample(name, 300, seed=4)
    assert a.shape == (300, toy.dimension(name)) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.isfinite(a).all() and np.abs(a).max() < 6.5
    # A Generator is accepted and advances.
    rng = np.random.default_rng(0)
    assert not np.array_equal(toy.sample(name, 5, rng), toy.sample(name, 5, rng))


@pytest.mark.parametrize("n, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                      (True, TypeError), ("10", TypeError)])
def test_sample_rejects_bad_n(n, error):
    with pytest.raises(error, match="n must be"):
        toy.sample("moons", n)


def test_log_density_rejects_bad_input():
    with pytest.raises(ValueError, match="3 features, but the toy set 'moons' is expecting 2"):
        toy.log_density("moons", np.zeros((4, 3)))
    with pytest.raises(ValueError, match="Expected 2D array"):
        toy.log_density("moons", np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        toy.log_density("moons", np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="noise_std must be finite and ≥ 0"):
        toy.log_density("moons", np.zeros((1, 2)), noise_std=-0.1)
    with pytest.raises(ValueError, match="Unknown method 'exact'"):
        toy.log_density("moons", np.zeros((1, 2)), method="exact")
    with pytest.raises(ValueError, match="at least the grid spacing"):
        toy.grid_log_density("moons", noise_std=0.01, spacing=0.02)
    for name in ("checkerboard", "pinwheel"):
        with pytest.raises(ValueError, match="noise_std > 0"):
            toy.score(name, np.zeros((1, 2)), noise_std=0.0)


# ----------------------------------------------------------------------------- densities
@pytest.mark.parametrize("sigma", [0.0, 0.3])
@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one(name, sigma):
    """Midpoint rule on [−6, 6]^d (h = 0.05, or 0.1 at σ = 0.3: the densities are smooth on
    that scale or, for the checkerboard at σ = 0, constant on cells aligned with its squares)."""
    d = toy.dimension(name)
    h = (0.05 if sigma == 0 else 0.1) if d == 2 else 0.002
    x = _grid(-6.0, 6.0, h, d)
    total = np.exp(toy.log_density(name, x, noise_std=sigma)).sum() * h ** d
    assert total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("sigma", [0.0, 0.2])
def test_8gaussians_matches_a_direct_scipy_mixture(sigma, rng):
    x = rng.uniform(-5, 5, size=(200, 2))
    angles = np.arange(8) * np.pi / 4
    centres = 4 / math.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    var = (0.5 / math.sqrt(2)) ** 2 + sigma ** 2
    direct = np.mean([stats.multivariate_normal(c, var * np.eye(2)).pdf(x) for c in centres],
                     axis=0)
    np.testing.assert_allclose(toy.log_density("8gaussians", x, sigma), np.log(direct),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_1d_mixture_matches_the_tutorial_mixture(sigma):
    x = np.linspace(-4, 4, 101)[:, None]
    sd = np.sqrt(np.array([0.25, 0.25, 0.5]) ** 2 + sigma ** 2)
    direct = (0.4 * stats.norm(-0.5, sd[0]).pdf(x) + 0.3 * stats.norm(1.0, sd[1]).pdf(x)
              + 0.3 * stats.norm(2.0, sd[2]).pdf(x))[:, 0]
    np.testing.assert_allclose(toy.log_density("gaussian_mixture_1d", x, sigma), np.log(direct),
                               rtol=0, atol=1e-10)


def test_ring_closed_form_matches_quadrature_over_the_angle(rng):
    """The Bessel closed form of a blurred circle against the generic curve quadrature."""
    arm = toy._Arm(1.0, 0.0, 2 * np.pi,
                   lambda u: 1.5 * np.stack([np.cos(u), np.sin(u)], axis=-1),
                   lambda u: 1.5 * np.stack([-np.sin(u), np.cos(u)], axis=-1))
    curve = toy._CurveSet("circle", [arm], 0.24, "")
    ring = toy._RingSet("circle", [1.5], [1.0], 0.24, "")
    x = np.concatenate([rng.uniform(-4, 4, size=(300, 2)), [[0.0, 0.0], [1.5, 0.0]]])
    for sigma in (0.0, 0.3):
        np.testing.assert_allclose(ring.log_density(x, sigma), curve.log_density(x, sigma),
                                   rtol=0, atol=1e-8)
        np.testing.assert_allclose(ring.score(x, sigma), curve.score(x, sigma), rtol=0,
                                   atol=1e-7)


def test_checkerboard_values():
    x = np.array([[-3.0, -3.0], [-3.0, -1.0], [1.0, 1.0], [5.0, 5.0]])
    np.testing.assert_allclose(toy.log_density("checkerboard", x),
                               [math.log(1 / 32), -np.inf, math.log(1 / 32), -np.inf])
    # Far from the board the smoothed density is a Gaussian tail, not underflowed to -inf.
    far = toy.log_density("checkerboard", np.array([[9.0, 0.0]]), noise_std=0.1)
    assert -1300 < far[0] < -1200


@pytest.mark.parametrize("name, sigma, spacing, tol, level", [
    ("8gaussians", 0.1, None, 1e-4, -14.0),
    ("gaussian_mixture_1d", 0.05, None, 1e-6, -14.0),
    ("checkerboard", 0.2, None, 2e-3, -14.0),
    ("2spirals", 0.1, 0.025, 2e-3, -14.0),
    ("rings", 0.1, 0.025, 2e-3, -14.0),
    ("pinwheel", 0.3, 0.08, 1e-2, -5.0),
])
def test_grid_convolution_matches_the_analytic_density(name, sigma, spacing, tol, level, rng):
    """The numerical path (clean density on a grid, convolved, interpolated) agrees with the
    closed form / quadrature wherever log p_σ > max + level, and integrates to 1."""
    axes, grid = toy.grid_log_density(name, sigma, spacing=spacing)
    h = axes[0][1] - axes[0][0]
    assert grid.shape == tuple(len(a) for a in axes)
    assert np.exp(grid).sum() * h ** len(axes) == pytest.approx(1.0, abs=1e-4)
    d = toy.dimension(name)
    x = np.concatenate([rng.uniform(-4, 4, size=(3000, d)), toy.sample(name, 1000, seed=1)])
    exact = toy.log_density(name, x, sigma)
    numeric = toy.log_density(name, x, sigma, method="grid", grid_spacing=spacing)
    keep = exact > exact.max() + level
    assert keep.sum() > 500
    assert np.max(np.abs(exact[keep] - numeric[keep])) < tol
    outside = np.full((1, d), 50.0)
    assert toy.log_density(name, outside, sigma, method="grid", grid_spacing=spacing)[0] == \
        -np.inf


@pytest.mark.parametrize("name", NAMES)
def test_samples_follow_the_density(name):
    """Chi-square test of 20,000 noisy samples (σ = 0.1) against bin probabilities integrated
    from log_density. Seeds are fixed; a correct implementation fails with probability 1e-4."""
    sigma, n = 0.1, 20_000
    d = toy.dimension(name)
    x = toy.sample(name, n, seed=11).astype(np.float64)
    x += sigma * np.random.default_rng(12).standard_normal(x.shape)
    bin_h, sub = (0.5, 10) if d == 2 else (0.25, 50)
    lo, hi = (-5.0, 5.0) if d == 2 else (-3.0, 5.0)
    fine = _grid(lo, hi, bin_h / sub, d)
    mass = np.exp(toy.log_density(name, fine, sigma)) * (bin_h / sub) ** d
    nb = int(round((hi - lo) / bin_h))
    expected = mass.reshape((nb, sub) * d).sum(axis=tuple(range(1, 2 * d, 2))).ravel()
    idx = np.floor((x - lo) / bin_h).astype(int)
    inside = np.all((idx >= 0) & (idx < nb), axis=1)
    flat = np.ravel_multi_index(idx[inside].T, (nb,) * d)
    observed = np.bincount(flat, minlength=nb ** d).astype(float)
    big = expected * n >= 5
    obs = np.append(observed[big], n - observed[big].sum())
    exp = np.append(expected[big], 1 - expected[big].sum()) * n
    _, p = stats.chisquare(obs, exp, ddof=0)
    assert big.sum() >= 10
    assert p > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_score_is_the_gradient_of_the_log_density(name):
    sigma = 0.2
    x = toy.sample(name, 40, seed=5).astype(np.float64)
    x += np.random.default_rng(6).normal(scale=0.5, size=x.shape)
    g = toy.score(name, x, sigma)
    eps = 1e-5
    fd = np.stack([(toy.log_density(name, x + eps * e, sigma)
                    - toy.log_density(name, x - eps * e, sigma)) / (2 * eps)
                   for e in np.eye(x.shape[1])], axis=1)
    assert g.shape == x.shape
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-4)


def test_true_denoiser_is_the_posterior_mean_of_8gaussians(rng):
    """x̃ + σ²∇log p_σ(x̃) = E[x | x̃] = Σ_k r_k(x̃)·(c_k + s²/(s² + σ²)(x̃ − c_k)) (Tweedie)."""
    angles = np.arange(8) * np.pi / 4
    centres = 2 * math.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    s2, sigma = 1 / 8, 0.3
    x = rng.uniform(-4, 4, size=(50, 2))
    log_r = -0.5 * np.sum((x[:, None] - centres[None]) ** 2, axis=2) / (s2 + sigma ** 2)
    r = np.exp(log_r - log_r.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    posterior = centres[None] + s2 / (s2 + sigma ** 2) * (x[:, None] - centres[None])
    expected = np.einsum("nk,nkd->nd", r, posterior)
    denoised = x + sigma ** 2 * toy.score("8gaussians", x, sigma)
    np.testing.assert_allclose(denoised, expected, atol=1e-10)
