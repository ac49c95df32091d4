"""Tests of the anomaly detector's threshold without a contamination guess, its per-feature
explanations (`explain`, `plot_explanation`, `dde score --explain`) and its pyod
conventions (`decision_scores_`, `threshold_`, `labels_`, `predict_proba`), checked against
pyod's own implementation and utilities.

Deterministic (fixed seeds). One statistical check, the false-alarm rate of the "auto"
threshold (see its docstring for its chance of failing).
"""
import json
import zipfile

import keras
import numpy as np
import pytest
from pyod.models.base import BaseDetector
from pyod.models.knn import KNN
from pyod.utils.utility import get_label_n, precision_n_scores, score_to_label, standardizer
from sklearn.metrics import roc_auc_score

from dde import DenoisingDensityEstimator
from dde.anomaly import DDEAnomalyDetector
from dde.plotting import plot_explanation
from dde_cli import main as cli_main

SMALL = dict(hidden_layers=2, width=32, max_steps=300, validation_interval=50, batch_size=128)
SCALES = np.array([1.0, 2.0, 0.5, 1.0])


def gaussian(n, seed):
    """n rows of N(m, diag(SCALES²)), m = (1, 0, 3, −2)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)) * SCALES + np.array([1.0, 0.0, 3.0, -2.0])


@pytest.fixture(scope="module")
def fitted():
    x = gaussian(2000, 0)
    return DDEAnomalyDetector(validation_fraction=0.25, random_state=0, **SMALL).fit(x), x


def test_auto_threshold_holds_its_false_alarm_rate(fitted):
    """The "auto" threshold is the 1 % quantile of 500 held-out rows' scores, so its false
    alarm rate on new normal rows is about Beta(5, 496)-distributed (mean 0.01, sd 0.0045);
    measured on 20,000 new rows (sd 0.0007 more). It lies outside [0.002, 0.03] with
    probability below 0.5 % over random seeds (Poisson tails: P(N(0.002·500) ≥ 5) = 0.004,
    P(N(0.03·500) ≤ 4) = 0.001); the seeds are fixed, so the test is deterministic."""
    det, x = fitted
    assert det.threshold_source_ == "held-out"
    rate = float(np.mean(det.predict(gaussian(20_000, 1)) == -1))
    assert 0.002 <= rate <= 0.03, rate


def test_training_rows_set_the_threshold_without_a_validation_split():
    x = gaussian(400, 2)
    det = DDEAnomalyDetector(validation_fraction=0.0, false_alarm_rate=0.05, random_state=0,
                             **SMALL).fit(x)
    assert det.threshold_source_ == "training"
    assert abs(int(np.sum(det.predict(x) == -1)) - 0.05 * len(x)) <= 1


@pytest.mark.parametrize("rate", [0.0, 0.6, -0.1, float("nan"), "often"])
def test_bad_false_alarm_rate_is_refused(rate):
    with pytest.raises((ValueError, TypeError), match="false_alarm_rate"):
        DDEAnomalyDetector(false_alarm_rate=rate, **SMALL).fit(gaussian(50, 0))


class _Quadratic(keras.layers.Layer):
    """f(z) = −½ Σ_j a_j z_j²: [batch, d] → [batch, 1]."""

    def __init__(self, a, **kwargs):
        super().__init__(**kwargs)
        self.a = np.asarray(a, dtype=np.float32)

    def call(self, z):
        return -0.5 * keras.ops.sum(self.a * z * z, axis=-1, keepdims=True)


def test_explain_is_exact_for_a_quadratic_energy():
    """For f = −½ Σ a_j z_j² and baseline 0 the integrated gradients are exactly
    a_j z_j² / 2 (the integrand is linear along the path)."""
    a = np.array([1.0, 4.0, 0.25])
    inputs = keras.Input((3,))
    model = DenoisingDensityEstimator(keras.Model(inputs, _Quadratic(a)(inputs)),
                                      noise_std=0.1)
    model(np.zeros((1, 3), np.float32))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    det = DDEAnomalyDetector(estimator=model, contamination=0.1).fit(x)
    q = rng.normal(size=(7, 3)) * 3
    parts = det.explain(q, baseline=np.zeros(3))
    np.testing.assert_allclose(parts, 0.5 * a * q**2, rtol=1e-5, atol=1e-6)
    # the default baseline is the training row closest to the mode
    assert np.allclose(det.baseline_, x[np.argmin(np.sum(a * x**2, 1))])


def test_explanations_sum_to_the_score_difference_and_localize(fitted):
    det, _ = fitted
    rng = np.random.default_rng(3)
    q = det.baseline_ + rng.normal(size=(50, 4)) * 0.1 * SCALES
    q[:, 1] += 8.0 * SCALES[1]                  # far out in feature 1 only
    q[:5, 1] = det.baseline_[1]                 # five rows at the baseline in feature 1
    parts = det.explain(q)
    assert parts.shape == (50, 4)
    gap = det.score_samples(det.baseline_[None]) - det.score_samples(q)
    np.testing.assert_allclose(parts.sum(1), gap, rtol=1e-3, atol=1e-3)
    assert np.all(parts[5:, 1] > 0.9 * parts[5:].sum(1))   # feature 1 explains the outliers
    np.testing.assert_array_equal(parts[:5, 1], 0.0)         # equal to the baseline: zero
    with pytest.raises(ValueError, match="baseline must be one row of 4"):
        det.explain(q, baseline=np.zeros(3))
    with pytest.raises(ValueError, match="4 features"):
        det.explain(q[:, :3])


class _PyODAdapter(BaseDetector):
    """A pyod detector whose scores are the DDE detector's outlier scores, so that pyod's own
    predict_proba and threshold code can be compared with the detector's."""

    def __init__(self, det, contamination):
        super().__init__(contamination=contamination)
        self.det = det

    def fit(self, X, y=None):
        self._set_n_classes(None)
        self.decision_scores_ = -self.det.score_samples(X)
        self._process_decision_scores()
        return self

    def decision_function(self, X):
        return -self.det.score_samples(X)


def test_pyod_attributes_and_predict_proba_match_pyod():
    x = gaussian(600, 4)
    det = DDEAnomalyDetector(contamination=0.1, random_state=1, **SMALL).fit(x)
    ref = _PyODAdapter(det, 0.1).fit(x)
    np.testing.assert_allclose(det.decision_scores_, ref.decision_scores_)
    assert det.threshold_ == pytest.approx(ref.threshold_, rel=1e-12, abs=1e-12)
    np.testing.assert_array_equal(det.labels_, ref.labels_)
    np.testing.assert_array_equal(det.labels_, (det.predict(x) == -1).astype(int))
    q = np.vstack([gaussian(30, 5), gaussian(10, 6) * 4])
    for method in ("linear", "unify"):
        np.testing.assert_allclose(det.predict_proba(q, method=method),
                                   ref.predict_proba(q, method=method), atol=1e-12)
    p = det.predict_proba(q)
    assert p.shape == (40, 2) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(1), 1.0)
    with pytest.raises(ValueError, match="'linear' or 'unify'"):
        det.predict_proba(q, method="softmax")


def test_works_with_pyod_utilities():
    """Training scores of the DDE detector and pyod's KNN, standardized with pyod's
    `standardizer` and averaged (pyod's score averaging), rank planted outliers first;
    pyod's labelling utilities read decision_scores_ as pyod's own detectors' scores."""
    rng = np.random.default_rng(7)
    x = np.vstack([gaussian(500, 7), rng.uniform(-12, 12, size=(25, 4))])
    y = np.r_[np.zeros(500), np.ones(25)]
    det = DDEAnomalyDetector(contamination=25 / 525, random_state=2, **SMALL).fit(x)
    knn = KNN(contamination=25 / 525).fit(x)
    scores = standardizer(np.column_stack([det.decision_scores_, knn.decision_scores_]))
    combined = scores.mean(1)
    assert roc_auc_score(y, det.decision_scores_) > 0.95
    assert roc_auc_score(y, combined) > 0.95
    assert precision_n_scores(y, det.decision_scores_) > 0.8
    assert get_label_n(y, det.decision_scores_, n=25).sum() == 25
    np.testing.assert_array_equal(
        score_to_label(det.decision_scores_, outliers_fraction=25 / 525), det.labels_)


def test_save_load_keeps_pyod_attributes_and_reads_version_1(fitted, tmp_path):
    det, x = fitted
    path = tmp_path / "det.zip"
    det.save(path)
    det2 = DDEAnomalyDetector.load(path)
    q = gaussian(20, 9)
    np.testing.assert_array_equal(det2.decision_scores_, det.decision_scores_)
    np.testing.assert_array_equal(det2.labels_, det.labels_)
    np.testing.assert_array_equal(det2.baseline_, det.baseline_)
    assert det2.threshold_ == det.threshold_ and det2.threshold_source_ == "held-out"
    np.testing.assert_array_equal(det2.explain(q), det.explain(q))
    np.testing.assert_array_equal(det2.predict_proba(q), det.predict_proba(q))
    # a version-1 file (no training scores, no baseline) scores; explain needs a baseline
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    state = json.loads(members.pop("detector.json"))
    state["version"] = 1
    for key in ("threshold_source_", "baseline_"):
        state.pop(key)
    members.pop("decision_scores.npy")
    old = tmp_path / "old.zip"
    with zipfile.ZipFile(old, "w") as archive:
        for name, raw in members.items():
            archive.writestr(name, raw)
        archive.writestr("detector.json", json.dumps(state))
    det1 = DDEAnomalyDetector.load(old)
    np.testing.assert_array_equal(det1.predict(q), det.predict(q))
    assert det1.threshold_ == -det1.offset_
    with pytest.raises(ValueError, match="refit"):
        det1.predict_proba(q)
    with pytest.raises(ValueError, match="baseline"):
        det1.explain(q)
    np.testing.assert_array_equal(det1.explain(q, baseline=det.baseline_), det.explain(q))
    # a version-2 file without its training scores is damaged
    broken = tmp_path / "broken.zip"
    state2 = json.loads(zipfile.ZipFile(path).read("detector.json"))
    with zipfile.ZipFile(broken, "w") as archive:
        for name, raw in members.items():
            archive.writestr(name, raw)
        archive.writestr("detector.json", json.dumps(state2))
    with pytest.raises(ValueError, match="lacks decision_scores.npy"):
        DDEAnomalyDetector.load(broken)


def test_plot_explanation_orders_bars_by_size():
    c = np.array([[0.1, -2.0, 0.5, 3.0, 0.0], [0.3, -1.0, 0.1, 1.0, 0.2]])
    fig = plot_explanation(c, ["a", "b", "c", "d", "e"], row=0, top=3)
    axis = fig.axes[0]
    labels = [t.get_text() for t in axis.get_yticklabels()]
    assert labels == ["d", "b", "c", "2 others"]         # top to bottom by |value|
    widths = [p.get_width() for p in axis.patches]
    np.testing.assert_allclose(widths, [3.0, -2.0, 0.5, 0.1])
    assert "1.6" in axis.get_title()                      # the row total: 0.1 − 2 + 0.5 + 3
    mean = plot_explanation(c).axes[0]
    assert len(mean.patches) == 5 and "mean" in mean.get_xlabel()
    with pytest.raises(ValueError, match="row must be"):
        plot_explanation(c, row=2)
    with pytest.raises(ValueError, match="feature names"):
        plot_explanation(c, ["a"])
    with pytest.raises(ValueError, match="NaN"):
        plot_explanation(np.array([np.nan, 1.0]))


def test_cli_score_explain_writes_contribution_columns(fitted, tmp_path):
    det, _ = fitted
    det.save(tmp_path / "det.zip")
    q = gaussian(30, 11)
    np.savetxt(tmp_path / "q.csv", q, delimiter=",", header="a,b,c,d", comments="")
    out = tmp_path / "scores.csv"
    assert cli_main(["score", "--model", str(tmp_path / "det.zip"), "--data",
                     str(tmp_path / "q.csv"), "--out", str(out), "--explain", "--quiet"]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header == ["score", "decision", "label", "explain_a", "explain_b", "explain_c",
                      "explain_d"]
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    np.testing.assert_allclose(table[:, 3:], det.explain(q), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table[:, 0], det.score_samples(q))
