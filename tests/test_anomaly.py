"""Tests of dde.anomaly.DDEAnomalyDetector: detection quality on planted outliers, the
scikit-learn outlier-detector conventions, persistence, input validation, check_estimator,
Pipeline / clone, a given estimator, and the held-out KDE bandwidth rule."""
import os
import zipfile

import keras
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from dde import DenoisingDensityEstimator, nets
from dde.anomaly import (AUTO_CONTAMINATION, DDEAnomalyDetector, _seeded_init,
                         heldout_kde_bandwidth)

# Small and fast: enough for the conventions, not for quality.
TINY = dict(hidden_layers=1, width=16, max_steps=40, validation_interval=20, batch_size=64)

CENTRES = np.array([[0, 0, 0, 0, 0], [5, 0, 0, 0, 0], [0, 5, 0, 0, 0]], dtype=float)


def mixture(n, seed):
    """n points of a 5-D mixture of three unit Gaussians (centres CENTRES)."""
    rng = np.random.default_rng(seed)
    return CENTRES[rng.integers(0, 3, n)] + rng.normal(size=(n, 5))


def planted_outliers(n, seed):
    """n points uniform in [-10, 15]^5 at distance ≥ 6 (≥ 6 standard deviations) from every
    mixture centre: far outside the inliers' support."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        p = rng.uniform(-10, 15, size=(4 * n, 5))
        dist = np.min(np.linalg.norm(p[:, None, :] - CENTRES[None], axis=-1), axis=1)
        out.extend(p[dist >= 6.0])
    return np.asarray(out[:n])


@pytest.fixture(scope="module")
def fitted():
    """A small detector fitted on 600 mixture points with contamination 0.1."""
    x = mixture(600, 0)
    det = DDEAnomalyDetector(contamination=0.1, random_state=0, **TINY).fit(x)
    return det, x


def test_detects_planted_outliers():
    """AUROC > 0.95 for 5-D mixture inliers vs planted far outliers. Seeds are fixed, so the
    result is deterministic; over random seeds this budget gives AUROC ≈ 0.99–1.0, and a value
    ≤ 0.95 would signal a real defect (estimated chance of failure ≪ 1 %)."""
    x_train = mixture(1500, 1)
    det = DDEAnomalyDetector(hidden_layers=2, width=64, max_steps=600, random_state=1)
    det.fit(x_train)
    x_in, x_out = mixture(400, 2), planted_outliers(100, 3)
    scores = det.score_samples(np.vstack([x_in, x_out]))
    y = np.r_[np.zeros(len(x_in)), np.ones(len(x_out))]
    assert roc_auc_score(y, -scores) > 0.95
    # outliers score lower on average: the sign convention (higher = more normal)
    assert scores[len(x_in):].mean() < scores[:len(x_in)].mean()


def test_conventions(fitted):
    det, x = fitted
    x_new = np.vstack([mixture(50, 5), planted_outliers(10, 6)])
    s, d, p = det.score_samples(x_new), det.decision_function(x_new), det.predict(x_new)
    assert s.shape == d.shape == p.shape == (60,)
    assert s.dtype == np.float64 and p.dtype.kind == "i"
    assert set(np.unique(p)) <= {-1, 1}
    np.testing.assert_allclose(d, s - det.offset_)
    np.testing.assert_array_equal(p, np.where(d < 0, -1, 1))
    assert det.n_features_in_ == 5
    assert not hasattr(det, "feature_names_in_")
    # the training fraction flagged equals contamination within one sample
    flagged = int(np.sum(det.predict(x) == -1))
    assert abs(flagged - 0.1 * len(x)) <= 1
    assert det.n_steps_ >= det.best_step_ > 0
    assert det.noise_std_ > 0
    assert len(det.history_["loss"]) == len(det.history_["val_loss"]) >= 1


def test_auto_threshold_is_the_heldout_quantile():
    """contamination="auto": offset_ is the false_alarm_rate quantile of the held-out
    validation rows' scores (their false-alarm rate on new data: tests/test_anomaly_explain.py)."""
    x = mixture(500, 7)
    det = DDEAnomalyDetector(random_state=0, **TINY).fit(x)
    assert det.threshold_source_ == "held-out" and det.false_alarm_rate == AUTO_CONTAMINATION
    # the same split as fit: 10 % of the rows by the detector's seeded permutation
    rng = np.random.RandomState(0)
    rng.randint(0, 2**31 - 1, size=4)
    held = np.sort(rng.permutation(500)[:50])
    assert det.offset_ == pytest.approx(np.quantile(det.score_samples(x[held]), 0.01))


def test_score_is_log_density_in_original_units(fitted):
    """Scaling a feature by c shifts the log-density by −log c: score_samples is the model's
    f(z) on standardized z minus Σ log scale (a change of variables)."""
    det, x = fitted
    z = det.scaler_.transform(x[:20]).astype(np.float32)
    expected = det.estimator_.log_density(z).astype(np.float64) - np.log(
        det.scaler_.scale_).sum()
    np.testing.assert_allclose(det.score_samples(x[:20]), expected, rtol=1e-6, atol=1e-6)


def test_not_fitted_error(tmp_path):
    det = DDEAnomalyDetector()
    x = mixture(10, 0)
    for method in (det.score_samples, det.decision_function, det.predict):
        with pytest.raises(NotFittedError):
            method(x)
    with pytest.raises(NotFittedError):
        det.save(tmp_path / "d.zip")
    assert not (tmp_path / "d.zip").exists()


def test_feature_count_mismatch(fitted):
    det, _ = fitted
    with pytest.raises(ValueError, match="X has 4 features, but DDEAnomalyDetector is "
                                         "expecting 5 features"):
        det.score_samples(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="expecting 5 features"):
        det.predict(np.zeros((3, 6)))


@pytest.mark.parametrize("bad, match", [
    (np.array([[0.0, np.nan]]), "NaN"),
    (np.array([[0.0, np.inf]]), "infinity"),
    (np.zeros(5), "Reshape your data"),
    (np.zeros((0, 5)), "0 sample"),
])
def test_bad_input(fitted, bad, match):
    det, _ = fitted
    with pytest.raises(ValueError, match=match):
        DDEAnomalyDetector(**TINY).fit(bad)
    if bad.ndim == 2 and bad.shape[1] == 2:
        bad = np.hstack([bad, np.zeros((1, 3))])
    with pytest.raises(ValueError, match=match):
        det.score_samples(bad)


def test_non_numeric_input():
    with pytest.raises(ValueError, match="could not convert string"):
        DDEAnomalyDetector(**TINY).fit(np.array([["a", "b"], ["c", "d"]]))


@pytest.mark.parametrize("params, exc, match", [
    ({"contamination": 0.7}, ValueError, r"contamination.*\(0.0, 0.5\]. Got 0.7"),
    ({"contamination": 0.0}, ValueError, "contamination"),
    ({"contamination": -0.1}, ValueError, "contamination"),
    ({"contamination": "most"}, ValueError, "contamination"),
    ({"noise_std": -1.0}, ValueError, "noise_std"),
    ({"noise_std": "silverman"}, ValueError, "noise_std"),
    ({"hidden_layers": 0}, ValueError, "hidden_layers"),
    ({"width": 2.5}, TypeError, "width"),
    ({"max_steps": 0}, ValueError, "max_steps"),
    ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
    ({"learning_rate": 0}, ValueError, "learning_rate"),
    ({"learning_rate_decay": "linear"}, ValueError, "learning_rate_decay"),
    ({"activation": "relu"}, ValueError, "piecewise linear"),
    ({"estimator": "model.keras"}, TypeError, "estimator"),
    ({"base": "flow"}, ValueError, "'base' parameter"),
    ({"base": "gaussian", "base_bound": 0.0}, ValueError, "base_bound"),
])
def test_bad_parameters(params, exc, match):
    with pytest.raises(exc, match=match):
        DDEAnomalyDetector(**{**TINY, **params}).fit(mixture(30, 0))


def test_save_load_round_trip(tmp_path):
    """A saved and reloaded detector gives bit-identical scores, the same threshold,
    parameters and feature names; the file is one zip archive with no pickle."""
    pd = pytest.importorskip("pandas")
    cols = [f"f{i}" for i in range(5)]
    x = pd.DataFrame(mixture(300, 3), columns=cols)
    det = DDEAnomalyDetector(contamination=0.05, random_state=3, **TINY).fit(x)
    path = tmp_path / "sub" / "detector.zip"
    det.save(path)
    assert sorted(zipfile.ZipFile(path).namelist()) == ["decision_scores.npy", "detector.json",
                                                        "estimator.keras"]
    assert [p.name for p in path.parent.iterdir()] == ["detector.zip"]  # no temporary left
    det2 = DDEAnomalyDetector.load(path)
    x_new = pd.DataFrame(np.vstack([mixture(40, 4), planted_outliers(5, 4)]), columns=cols)
    np.testing.assert_array_equal(det2.score_samples(x_new), det.score_samples(x_new))
    np.testing.assert_array_equal(det2.predict(x_new), det.predict(x_new))
    assert det2.offset_ == det.offset_ and det2.noise_std_ == det.noise_std_
    assert det2.get_params() == det.get_params()
    np.testing.assert_array_equal(det2.feature_names_in_, np.array(cols, dtype=object))
    np.testing.assert_array_equal(det2.scaler_.mean_, det.scaler_.mean_)
    assert det2.history_ == det.history_ and det2.n_steps_ == det.n_steps_
    assert det2.activation_ == det.activation_
    assert det2.activation_val_losses_ == det.activation_val_losses_


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        DDEAnomalyDetector.load(tmp_path / "missing.zip")
    junk = tmp_path / "junk.zip"
    junk.write_text("not a zip")
    with pytest.raises(ValueError, match="not a saved DDEAnomalyDetector"):
        DDEAnomalyDetector.load(junk)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="lacks"):
        DDEAnomalyDetector.load(other)


def test_failed_save_leaves_no_file(fitted, tmp_path, monkeypatch):
    det, _ = fitted
    path = tmp_path / "d.zip"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(det.estimator_, "save", broken)
    with pytest.raises(OSError):
        det.save(path)
    assert list(tmp_path.iterdir()) == []


def test_given_estimator():
    """A trained DDE passed as `estimator` is used as is: no training, no standardization,
    scores = its (normalized when available) log-density."""
    x = mixture(200, 8).astype(np.float32)
    model = DenoisingDensityEstimator(nets.energy_mlp(5, depth=1, width=8), noise_std=0.5,
                                      seed=0)
    model.fit(x, epochs=1, batch_size=64, verbose=0)
    det = DDEAnomalyDetector(estimator=model, contamination=0.1).fit(x)
    assert det.estimator_ is model and det.scaler_ is None and det.n_steps_ == 0
    assert det.noise_std_ == pytest.approx(0.5)
    np.testing.assert_allclose(det.score_samples(x[:10]), model.log_density(x[:10]),
                               rtol=1e-6, atol=1e-6)
    model.set_log_partition(3.5)
    det.fit(x)
    np.testing.assert_allclose(det.score_samples(x[:10]), model.log_prob(x[:10]), rtol=1e-6,
                               atol=1e-6)
    with pytest.raises(ValueError, match="expecting 5 features"):
        DDEAnomalyDetector(estimator=model).fit(x[:, :3])


@pytest.mark.parametrize("base", ["gaussian", "mixture"])
def test_base_density_detector_decays_like_its_base(base, tmp_path):
    """With a base, f = log q_σ + g and g ≤ softplus(base_bound): far from the data (10 to
    100 standard deviations) the score never exceeds the base's log-density by more than
    the bound, whatever the weights; the residual starts at zero; save/load keeps the scores
    bit for bit."""
    x = mixture(400, 11)
    det = DDEAnomalyDetector(base=base, base_bound=3.0, random_state=0, **TINY).fit(x)
    rng = np.random.default_rng(12)
    direction = rng.normal(size=(60, 5))
    far = det.scaler_.mean_ + det.scaler_.scale_ * (
        np.repeat([10.0, 30.0, 100.0], 20)[:, None]
        * direction / np.linalg.norm(direction, axis=1, keepdims=True))
    model = det.estimator_
    z = det.scaler_.transform(far).astype(np.float32)
    log_q = model.base.log_prob(z, np.full(len(z), det.noise_std_, np.float32)).numpy()
    excess = det.score_samples(far) - (log_q - np.log(det.scaler_.scale_).sum())
    assert np.all(excess <= np.log1p(np.exp(3.0)) + 1e-3), excess.max()
    # the detector's seeded initialization keeps the residual's zero last layer
    residual = nets.residual_energy_mlp(5, depth=1, width=16)
    _seeded_init(residual, 3)
    np.testing.assert_array_equal(residual(z[:5]).numpy(), 0.0)
    det.save(tmp_path / "b.zip")
    np.testing.assert_array_equal(DDEAnomalyDetector.load(tmp_path / "b.zip").score_samples(far),
                                  det.score_samples(far))


def test_history_records_seconds_per_interval(fitted):
    det, _ = fitted
    seconds = det.history_["seconds"]
    assert len(seconds) == len(det.history_["loss"]) and all(t > 0 for t in seconds)


def test_pipeline_and_clone():
    x = mixture(300, 9) * np.array([1, 100, 0.01, 1, 1])
    pipe = Pipeline([("scale", StandardScaler()),
                     ("detect", DDEAnomalyDetector(contamination=0.1, random_state=0, **TINY))])
    labels = pipe.fit(x).predict(x)
    assert labels.shape == (300,) and set(np.unique(labels)) == {-1, 1}
    assert pipe.score_samples(x).shape == (300,)
    det = DDEAnomalyDetector(contamination=0.2, noise_std=0.3, random_state=5, **TINY)
    twin = clone(det)
    assert twin is not det and twin.get_params() == det.get_params()
    assert not hasattr(twin, "estimator_")


def test_random_state_reproducible():
    x = mixture(200, 10)
    a = DDEAnomalyDetector(random_state=4, **TINY).fit(x).score_samples(x[:20])
    b = DDEAnomalyDetector(random_state=4, **TINY).fit(x).score_samples(x[:20])
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_noise_schedule_ends_at_noise_std():
    x = mixture(200, 11)
    det = DDEAnomalyDetector(noise_std=0.2, initial_noise_std=1.0, random_state=0,
                             **TINY).fit(x)
    assert det.noise_std_ == pytest.approx(0.2)
    assert float(det.estimator_.noise_std.numpy()) == pytest.approx(0.2)


def test_auto_activation_keeps_the_lower_heldout_loss():
    """activation="auto" trains softplus and swish networks on the same split and keeps the
    one with the lower validation loss at its restored step (at the final σ)."""
    det = DDEAnomalyDetector(random_state=0, **{**TINY, "max_steps": 60}).fit(mixture(300, 13))
    losses = det.activation_val_losses_
    assert set(losses) == set(DDEAnomalyDetector.AUTO_ACTIVATIONS)
    assert det.activation_ == min(losses, key=losses.get)
    assert losses[det.activation_] == pytest.approx(
        det.history_["val_loss"][det.best_step_ // 20 - 1])
    hidden = det.estimator_.network.get_layer("hidden_0")
    assert hidden.activation.__name__ == det.activation_
    # without a validation split there is nothing to select on: the first candidate
    plain = DDEAnomalyDetector(random_state=0, **{**TINY, "validation_fraction": 0.0}).fit(
        mixture(300, 13))
    assert plain.activation_ == "softplus" and list(plain.activation_val_losses_) == ["softplus"]
    fixed = DDEAnomalyDetector(random_state=0, activation="tanh", **TINY).fit(mixture(300, 13))
    assert fixed.activation_ == "tanh" and list(fixed.activation_val_losses_) == ["tanh"]


@pytest.mark.parametrize("decay, final_fraction", [("cosine", 0.02), ("none", 1.0)])
def test_learning_rate_decay(decay, final_fraction):
    """"cosine" ends the run at 2 % of the initial rate; "none" keeps it constant."""
    det = DDEAnomalyDetector(learning_rate=1e-3, learning_rate_decay=decay, random_state=0,
                             **{**TINY, "validation_fraction": 0.0}).fit(mixture(200, 12))
    assert det.n_steps_ == TINY["max_steps"]
    final = float(keras.ops.convert_to_numpy(det.estimator_.optimizer.learning_rate))
    assert final == pytest.approx(1e-3 * final_fraction, rel=1e-3)


@pytest.mark.parametrize("loo", [False, True])
def test_heldout_kde_bandwidth_matches_sklearn(loo):
    """The bandwidth rule equals the argmax of scikit-learn's KernelDensity held-out
    log-likelihood over the same grid (leave-one-out: checked against an explicit loop)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 2)) * np.array([1.0, 0.5])
    grid = np.geomspace(0.05, 2.0, 12)
    if not loo:
        fit, held = z[:200], z[200:]
        ll = [KernelDensity(bandwidth=h).fit(fit).score(held) for h in grid]
        assert heldout_kde_bandwidth(fit, held, grid) == pytest.approx(grid[np.argmax(ll)])
    else:
        z = z[:100]
        ll = [np.mean([KernelDensity(bandwidth=h).fit(np.delete(z, i, 0)).score(z[i:i + 1])
                       for i in range(len(z))]) for h in grid]
        assert heldout_kde_bandwidth(z, None, grid) == pytest.approx(grid[np.argmax(ll)])
    # Gaussian data: near the asymptotically optimal bandwidth (Silverman's ≈ 0.45 here)
    assert 0.2 < heldout_kde_bandwidth(z[:70], z[70:], grid) < 0.9


# check_estimator with a tiny budget (4 steps of a 1 × 8 network; no validation split, so
# each fit traces a single training function). Every applicable check runs and none is
# expected to fail; scikit-learn itself skips the array-API check unless SCIPY_ARRAY_API is
# set, and the sample-weight checks do not apply (fit takes no sample_weight).
CHECK_PARAMS = dict(hidden_layers=1, width=8, max_steps=4, validation_interval=4,
                    batch_size=64, validation_fraction=0.0, noise_std=0.5)


@parametrize_with_checks([DDEAnomalyDetector(**CHECK_PARAMS)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
