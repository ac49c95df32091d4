"""Anomaly scoring with a Denoising Density Estimator, in scikit-learn's outlier-detector API.

`DDEAnomalyDetector` standardizes the features (`z = (x − μ) / s`, fitted on the training
data), trains a `DenoisingDensityEstimator` `f(z) ≈ log p_σ(z) + c` on them and scores a sample
by its log-density in the original feature units,

    score_samples(x) = f(z) − Σ_j log s_j   (− log Ẑ when the model is normalized),

higher = more normal, shape [n]. As in `sklearn.ensemble.IsolationForest`,
`decision_function(x) = score_samples(x) − offset_` and `predict(x)` is +1 (inlier,
decision ≥ 0) or −1 (outlier, decision < 0). The threshold `offset_` needs no guess of the
outlier fraction: with `contamination="auto"` it is the `false_alarm_rate` quantile of the
scores of held-out training rows (rows the network never trained on), so that about that
fraction of new normal rows is flagged; a float `contamination` is the fraction of the
training rows flagged, as in scikit-learn and pyod.

pyod's conventions are kept beside scikit-learn's: `decision_scores_` (outlier scores
−score_samples of the training rows, higher = more abnormal), `threshold_` (= −offset_),
`labels_` (0 inlier, 1 outlier) and `predict_proba` (outlier probabilities, "linear" or
"unify"). `explain(x)` splits each row's outlier score into per-feature contributions.

Example:
    det = DDEAnomalyDetector(contamination=0.05, random_state=0).fit(x_train)
    labels = det.predict(x_new)          # +1 / −1
    proba = det.predict_proba(x_new)[:, 1]   # P(outlier), pyod's convention
    parts = det.explain(x_new)           # [n, d] per-feature contributions
    det.save("detector.zip")
    det2 = DDEAnomalyDetector.load("detector.zip")   # identical scores
"""
from __future__ import annotations

import io
import json
import math
import numbers
import os
import tempfile
import zipfile

import keras
import numpy as np
import tensorflow as tf
from scipy import special
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from dde._io import atomic_path, check_keras_archive
from dde._validation import check_finite_results
from dde.callbacks import EpochTimer
from dde.export import export_detector
from dde.models import DenoisingDensityEstimator, EnergyModel, NoiseStdSchedule
from dde.bases import fit_gaussian_base, fit_mixture_base
from dde.nets import check_activation, energy_mlp, residual_energy_mlp

__all__ = ["DDEAnomalyDetector", "AUTO_CONTAMINATION"]

#: The default `false_alarm_rate`: with `contamination="auto"` the threshold flags about 1 %
#: of new normal rows (the 1st percentile of the held-out training rows' scores).
AUTO_CONTAMINATION = 0.01

_FORMAT = "dde.DDEAnomalyDetector"
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_STATE_FILE = "detector.json"
_MODEL_FILE = "estimator.keras"
_SCORES_FILE = "decision_scores.npy"
#: Gauss–Legendre nodes of `explain`'s path integral (exact for f polynomial of degree ≤ 2n
#: along the path; smooth MLP energies converge far faster than a Riemann sum).
_EXPLAIN_NODES = 32
# Evaluations of the validation loss use at least this many (noisy copies of) rows, so that
# the early-stopping signal is not dominated by the noise draw on small validation sets.
_MIN_VALIDATION_ROWS = 4096
_XLA_MIN_STEPS = 500
_SCORE_BATCH = 8192


class DDEAnomalyDetector(OutlierMixin, BaseEstimator):
    """Unsupervised outlier detector scoring samples by a learned log-density (a DDE).

    Parameters
    ----------
    hidden_layers : int, default=3
        Hidden Dense layers of the energy MLP (`dde.nets.energy_mlp`).
    width : int, default=256
        Units per hidden layer.
    activation : str or "auto", default="auto"
        A twice-differentiable activation (ReLU-like ones are rejected). "auto": one network
        per activation of `AUTO_ACTIVATIONS` (softplus, swish) is trained on the same split
        and the one with the lower held-out denoising loss is kept (softplus without a
        validation split); this doubles the fitting time. Neither activation is better on
        every data set: swish fits the larger tabular sets better, softplus the small ones.
    noise_std : float, "auto" or "scott", default="auto"
        σ of the denoising score-matching noise, in standardized feature units; the learned
        density is the data density smoothed by N(0, σ²I), whose sample version is a Gaussian
        kernel density estimate (KDE) of bandwidth σ. "auto": the σ of `AUTO_NOISE_GRID`
        maximizing the held-out log-likelihood of that KDE (fitted on the training rows,
        evaluated on the validation rows; leave-one-out without a validation split).
        "scott": Scott's rule `σ = n^(−1/(d+4))` for n training rows of d features.
    initial_noise_std : float or None, default=1.0
        If larger than the final σ, training starts at this σ, which decays geometrically
        (×0.9 per stage, or faster on a short budget) to the final σ over the first half of
        `max_steps` (`NoiseStdSchedule.annealing`); early stopping only acts afterwards. The
        smooth large-σ density is learned first. None (or max_steps=1): constant σ.
    max_steps : int, default=3000
        Budget of optimizer steps (batches); split into equal evaluation intervals of at most
        `validation_interval` steps, it may be exceeded by less than one step per interval.
    batch_size : int, default=256
        Rows per batch (capped at the number of training rows).
    learning_rate : float, default=1e-3
        Adam learning rate (the initial one with a decay).
    learning_rate_decay : {"cosine", "none"}, default="cosine"
        "cosine": the rate follows a cosine from `learning_rate` down to 2 % of it over
        `max_steps`, which steadies the final weights; "none": constant.
    validation_fraction : float, default=0.1
        Fraction of the training rows held out to monitor the denoising loss (with fixed
        noise) every `validation_interval` steps; training stops after `patience` evaluations
        without improvement and the best weights are restored. 0 disables early stopping (so
        do fewer than 10 training rows).
    validation_interval : int, default=100
        Steps between two evaluations of the validation loss.
    patience : int, default=8
        Evaluations without improvement before stopping.
    base : None, "gaussian" or "mixture", default=None
        A base-density energy f = log q_σ + g (`dde.bases`): q a full-covariance Gaussian or
        a Gaussian mixture (components by held-out likelihood) fitted to the standardized
        training rows and smoothed at the model's σ, g an MLP starting at zero and bounded
        above by ≈ `base_bound` nats (`dde.nets.residual_energy_mlp`, "cap"), so that far from
        the data the log-density falls at least as fast as log q_σ. None: a plain energy MLP.
    base_bound : float, default=5.0
        The upper bound of g with a base (nats).
    contamination : "auto" or float in (0, 0.5], default="auto"
        "auto": no outliers are assumed in the training data; `offset_` is the
        `false_alarm_rate` quantile of the scores of the held-out validation rows (of the
        training rows when there are none: `validation_fraction=0`, fewer than 10 rows, or
        `estimator=`), so that about that fraction of new normal rows is flagged
        (`threshold_source_` says which rows set it). A float: the expected fraction of
        outliers in the training data; `offset_` is this percentile of the training scores.
    false_alarm_rate : float in (0, 0.5], default=0.01
        The fraction of normal rows flagged by the "auto" threshold.
    estimator : DenoisingDensityEstimator or None, default=None
        A trained model to use instead of training one. It scores the features as given (no
        standardization: it must have been trained on the same feature space); `fit` then only
        checks the feature count and sets `offset_`.
    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, network initialization, batch order and training noise.
    verbose : int, default=0
        Keras progress output during training (0, 1 or 2).

    The defaults (σ rule and floor, annealing from σ = 1, 3,000 steps with a cosine learning
    rate, activation by held-out loss) were chosen on scikit-learn's bundled breast-cancer,
    wine and digits sets with one class normal (`benchmarks/anomaly_dev.py`) and by the
    held-out denoising loss of training splits, which needs no labels; the width 256 by that
    loss on ADBench training splits (lower than 3 × 128 on 5 of 6 sets, than 4 × 128 and
    GELU on all 6; `benchmarks/README.md`). A step takes a few milliseconds on a CPU, so a default fit (two
    networks) takes about a minute.

    Attributes
    ----------
    estimator_ : DenoisingDensityEstimator
        The trained (or given) model, on standardized features.
    scaler_ : sklearn.preprocessing.StandardScaler or None
        Feature standardization fitted on the training data (None with `estimator=`).
    noise_std_ : float
        σ of the model (standardized units).
    offset_ : float
        Threshold on `score_samples`: decision_function = score_samples − offset_.
    threshold_source_ : str
        "held-out" or "training": the rows whose scores set `offset_`.
    decision_scores_ : ndarray [n_train]
        pyod's outlier scores of the training rows: −score_samples (higher = more abnormal).
    threshold_ : float
        pyod's threshold on outlier scores, −offset_.
    labels_ : ndarray of int [n_train]
        pyod's training labels: 1 where decision_scores_ > threshold_ (outlier), else 0.
    baseline_ : ndarray [n_features]
        The reference row of `explain`: the training row of highest score (the most normal
        one), in the original units.
    activation_ : str
        The activation of the trained network (the selected one with activation="auto").
    activation_val_losses_ : dict
        Held-out denoising loss (at the final σ, restored step) of each activation trained.
    n_steps_ : int
        Optimizer steps taken (0 with `estimator=`).
    best_step_ : int
        Steps at the restored best validation loss (= n_steps_ without early stopping).
    history_ : dict
        Per-evaluation lists: "loss" (training), "val_loss" (validation; empty without a
        validation split), "noise_std" (σ at the end of each interval) and "seconds" (wall
        time of each interval of `validation_interval` steps, the first with compilation).
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when fitted on a DataFrame with string columns)
    """

    #: Candidate σ of `noise_std="auto"` (standardized units). The floor 0.2 keeps σ
    #: trainable on data with repeated or discrete values, whose held-out KDE likelihood grows
    #: without bound as the bandwidth shrinks.
    AUTO_NOISE_GRID = tuple(np.geomspace(0.2, 2.0, 17).round(5))
    #: Candidate activations of `activation="auto"`, the first being the fallback without a
    #: validation split.
    AUTO_ACTIVATIONS = ("softplus", "swish")

    def __init__(self, *, hidden_layers=3, width=256, activation="auto", noise_std="auto",
                 initial_noise_std=1.0, max_steps=3000, batch_size=256, learning_rate=1e-3,
                 learning_rate_decay="cosine", validation_fraction=0.1, validation_interval=100,
                 patience=8, base=None, base_bound=5.0, contamination="auto",
                 false_alarm_rate=AUTO_CONTAMINATION, estimator=None, random_state=None,
                 verbose=0):
        self.hidden_layers = hidden_layers
        self.width = width
        self.activation = activation
        self.noise_std = noise_std
        self.initial_noise_std = initial_noise_std
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_decay = learning_rate_decay
        self.validation_fraction = validation_fraction
        self.validation_interval = validation_interval
        self.patience = patience
        self.base = base
        self.base_bound = base_bound
        self.contamination = contamination
        self.false_alarm_rate = false_alarm_rate
        self.estimator = estimator
        self.random_state = random_state
        self.verbose = verbose

    # --------------------------------------------------------------------- parameter checks
    def _param_error(self, name, expected, exc=ValueError):
        value = getattr(self, name)
        return exc(f"The '{name}' parameter of {type(self).__name__} must be {expected}. "
                   f"Got {value!r} instead.")

    def _check_int(self, name, low, allow_zero=False):
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self._param_error(name, f"an int in the range [{low}, inf)", TypeError)
        if value < low:
            raise self._param_error(name, f"an int in the range [{low}, inf)")

    def _check_float(self, name, low, high=None, low_open=True, high_open=False):
        value = getattr(self, name)
        lo = "(" if low_open else "["
        hi = ")" if (high is None or high_open) else "]"
        expected = f"a float in the range {lo}{low}, {'inf' if high is None else high}{hi}"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self._param_error(name, expected, TypeError)
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise self._param_error(name, expected)

    def _check_params(self):
        c = self.contamination
        if isinstance(c, str):
            if c != "auto":
                raise self._param_error(
                    "contamination", "a str among {'auto'} or a float in the range (0.0, 0.5]")
        else:
            try:
                self._check_float("contamination", 0.0, 0.5)
            except (TypeError, ValueError) as err:
                raise type(err)(str(err).replace(
                    "a float in", "a str among {'auto'} or a float in")) from None
        self._check_float("false_alarm_rate", 0.0, 0.5)
        if self.estimator is not None:
            if not isinstance(self.estimator, EnergyModel):
                raise self._param_error("estimator",
                                        "a trained dde DenoisingDensityEstimator or None",
                                        TypeError)
            return
        self._check_int("hidden_layers", 1)
        self._check_int("width", 1)
        try:
            if self.activation != "auto":
                check_activation(self.activation)
        except ValueError as err:
            raise ValueError(f"The 'activation' parameter of {type(self).__name__}: {err}") \
                from None
        if isinstance(self.noise_std, str):
            if self.noise_std not in ("auto", "scott"):
                raise self._param_error(
                    "noise_std", "a str among {'auto', 'scott'} or a float in the range (0, inf)")
        else:
            self._check_float("noise_std", 0.0)
        if self.initial_noise_std is not None:
            self._check_float("initial_noise_std", 0.0)
        self._check_int("max_steps", 1)
        self._check_int("batch_size", 1)
        self._check_float("learning_rate", 0.0)
        if self.learning_rate_decay not in ("cosine", "none"):
            raise self._param_error("learning_rate_decay", "a str among {'cosine', 'none'}")
        self._check_float("validation_fraction", 0.0, 1.0, low_open=False, high_open=True)
        self._check_int("validation_interval", 1)
        self._check_int("patience", 1)
        if self.base not in (None, "gaussian", "mixture"):
            raise self._param_error("base", "None or a str among {'gaussian', 'mixture'}")
        self._check_float("base_bound", 0.0)
        self._check_int("verbose", 0)

    # ------------------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Fit on X ([n_samples, n_features]); `y` is ignored. Returns self."""
        self._check_params()
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        rng = check_random_state(self.random_state)
        if self.estimator is not None:
            model = self.estimator
            if not model.built or model.input_dim != X.shape[1]:
                raise ValueError(
                    f"X has {X.shape[1]} features, but the given estimator is expecting "
                    f"{getattr(model, 'input_dim', 'an unknown number of')} features as input.")
            self.scaler_ = None
            self.n_steps_ = 0
            self.best_step_ = 0
            self.history_ = {"loss": [], "val_loss": [], "noise_std": [], "seconds": []}
            self.activation_ = None
            self.activation_val_losses_ = {}
            heldout = np.zeros(0, dtype=int)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                self.scaler_ = StandardScaler().fit(X)
            if not np.isfinite(self.scaler_.scale_).all() or \
                    not np.isfinite(self.scaler_.mean_).all():
                j = int(np.flatnonzero(~(np.isfinite(self.scaler_.scale_)
                                         & np.isfinite(self.scaler_.mean_)))[0])
                raise ValueError(f"The mean or spread of column {j} of X overflows float64: "
                                 "its values are too large to standardize.")
            model, heldout = self._train(self._standardize(X, "X"), rng)
        self.estimator_ = model
        self.noise_std_ = float(model.resolve_noise_std(None))
        self._set_shift()
        scores = self._score(X)
        if self.contamination == "auto":
            self.threshold_source_ = "held-out" if len(heldout) else "training"
            reference = scores[heldout] if len(heldout) else scores
            self.offset_ = float(np.quantile(reference, float(self.false_alarm_rate)))
        else:
            self.threshold_source_ = "training"
            self.offset_ = float(np.percentile(scores, 100.0 * float(self.contamination)))
        self.baseline_ = np.array(X[int(np.argmax(scores))], dtype=np.float64)
        self._set_pyod_attributes(-scores)
        return self

    def _set_pyod_attributes(self, decision_scores) -> None:
        """decision_scores_, threshold_ and labels_ as pyod's BaseDetector defines them."""
        self.decision_scores_ = np.asarray(decision_scores, dtype=np.float64)
        self.threshold_ = -self.offset_
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)

    def _resolve_noise_std(self, z_train, z_val, rng):
        n, d = z_train.shape
        if self.noise_std == "scott":
            return float(n ** (-1.0 / (d + 4)))
        if self.noise_std == "auto":
            return heldout_kde_bandwidth(z_train, z_val if len(z_val) else None,
                                         self.AUTO_NOISE_GRID, rng)
        return float(self.noise_std)

    def _train(self, z, rng):
        """(trained model, indices of the held-out validation rows of z)."""
        n, d = z.shape
        seeds = rng.randint(0, 2**31 - 1, size=4)
        n_val = int(round(self.validation_fraction * n)) if n >= 10 else 0
        n_val = min(n_val, n - 1)
        perm = rng.permutation(n)
        z_val, z_train = z[perm[:n_val]], z[perm[n_val:]]
        sigma = self._resolve_noise_std(z_train, z_val, rng)
        if self.activation != "auto":
            candidates = (self.activation,)
        elif n_val > 0:
            candidates = self.AUTO_ACTIVATIONS
        else:  # nothing to select on
            candidates = self.AUTO_ACTIVATIONS[:1]
        fits = {act: self._train_one(z_train, z_val, sigma, act, seeds) for act in candidates}
        # The held-out denoising loss at the final σ (restored step) picks the activation.
        # (min keeps the first of equal losses; NaN — no validation rows — only when alone)
        best = min(candidates, key=lambda act: fits[act][1]["val_loss_"])
        model, info = fits[best]
        self.activation_ = best
        self.activation_val_losses_ = {act: fits[act][1]["val_loss_"] for act in candidates}
        for key in ("history_", "n_steps_", "best_step_"):
            setattr(self, key, info[key])
        model.set_data_statistics(z_train)
        return model, np.sort(perm[:n_val])

    def _train_one(self, z_train, z_val, sigma, activation, seeds):
        """Train one DDE with `activation`; returns (model, {history_, n_steps_, best_step_,
        val_loss_}) with val_loss_ the validation loss at the restored step (NaN without a
        validation split)."""
        d = z_train.shape[1]
        n_val = len(z_val)
        sigma0 = sigma
        if self.initial_noise_std is not None and self.max_steps > 1:  # (1 step: no annealing)
            sigma0 = max(float(self.initial_noise_std), sigma)
        base = None
        if self.base is None:
            network = energy_mlp(d, depth=self.hidden_layers, width=self.width,
                                 activation=activation, name="energy_mlp")
        else:
            network = residual_energy_mlp(d, depth=self.hidden_layers, width=self.width,
                                          activation=activation, bound=self.base_bound,
                                          bound_kind="cap", name="residual_energy_mlp")
            if self.base == "gaussian":
                base = fit_gaussian_base(z_train)
            else:
                base, _ = fit_mixture_base(z_train, z_val if n_val else None,
                                           seed=int(seeds[3]))
        _seeded_init(network, int(seeds[0]))
        model = DenoisingDensityEstimator(network, noise_std=sigma0, seed=int(seeds[1]),
                                          base=base, name="dde")
        # XLA roughly halves the cost of a double-backprop step of an MLP on CPU; its
        # compilation only pays off over a long enough run.
        learning_rate = self.learning_rate
        if self.learning_rate_decay == "cosine":
            learning_rate = keras.optimizers.schedules.CosineDecay(
                self.learning_rate, decay_steps=self.max_steps, alpha=0.02)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      jit_compile=self.max_steps >= _XLA_MIN_STEPS)

        batch = min(self.batch_size, len(z_train))
        # `epochs` Keras epochs of `interval` steps each: ≥ max_steps in total, by less
        # than one step per epoch.
        epochs = math.ceil(self.max_steps / self.validation_interval)
        interval = math.ceil(self.max_steps / epochs)
        data = (tf.data.Dataset.from_tensor_slices(z_train)
                .shuffle(len(z_train), seed=int(seeds[2]), reshuffle_each_iteration=True)
                .repeat().batch(batch, drop_remainder=True))
        callbacks, anneal_epochs = [EpochTimer()], 0
        if sigma0 > sigma:
            schedule = NoiseStdSchedule.annealing(sigma0, sigma, self.max_steps, fraction=0.5,
                                                  factor=0.9)
            callbacks.append(schedule)
            anneal_epochs = math.ceil(schedule.anneal_steps / interval)
        validation_data = None
        if n_val > 0:
            reps = max(1, math.ceil(_MIN_VALIDATION_ROWS / n_val))
            validation_data = np.tile(z_val, (reps, 1))
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=self.patience, restore_best_weights=True,
                start_from_epoch=anneal_epochs))
        hist = model.fit(data, epochs=epochs, steps_per_epoch=interval,
                         validation_data=validation_data,
                         validation_batch_size=min(8192, len(validation_data))
                         if validation_data is not None else None,
                         callbacks=callbacks, verbose=self.verbose)
        losses = [float(v) for v in hist.history.get("loss", [])]
        val_losses = [float(v) for v in hist.history.get("val_loss", [])]
        n_steps = len(losses) * interval
        stopper = next((c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)),
                       None)
        if stopper is not None and stopper.best_weights is not None:
            best_step = (stopper.best_epoch + 1) * interval
        else:
            best_step = n_steps
        val_loss = val_losses[best_step // interval - 1] if val_losses else float("nan")
        return model, {"history_": {"loss": losses, "val_loss": val_losses,
                                    "noise_std": [float(v) for v in
                                                  hist.history.get("noise_std", [])],
                                    "seconds": [float(v) for v in
                                                hist.history.get("epoch_seconds", [])]},
                       "n_steps_": n_steps, "best_step_": best_step, "val_loss_": val_loss}

    def _set_shift(self):
        """The constant added to f(z): −Σ log s_j (change of variables), − log Ẑ if the
        model is normalized."""
        shift = 0.0
        if self.scaler_ is not None:
            shift -= float(np.sum(np.log(self.scaler_.scale_)))
        if self.estimator_.is_normalized:
            shift -= float(self.estimator_.log_z.numpy())
        self.log_density_shift_ = shift

    # ------------------------------------------------------------------------------ scoring
    def score_samples(self, X) -> np.ndarray:
        """Log-density of each row of X in the original units (higher = more normal): [n].

        Un-normalized (up to an additive constant) unless the model was normalized.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self._score(X)

    def _standardize(self, X, name="X") -> np.ndarray:
        """z = (X − μ)/s in the model's float dtype (X as is without a scaler). A value that
        becomes ±inf there (e.g. 1e300 in float32) would give a NaN score, which no threshold
        can judge: such rows are refused with a ValueError naming row and column."""
        dtype = self.estimator_.compute_dtype if hasattr(self, "estimator_") else np.float32
        with np.errstate(over="ignore", invalid="ignore"):
            wide = self.scaler_.transform(X) if self.scaler_ is not None else np.asarray(X)
            z = np.asarray(wide, dtype=dtype)
        bad = ~np.isfinite(z)
        if bad.any():
            rows = np.flatnonzero(bad.any(1))
            i, j = rows[0], int(np.flatnonzero(bad[rows[0]])[0])
            raise ValueError(
                f"{name}[{i}, {j}] = {float(np.asarray(X)[i, j]):g} is too large for the "
                f"detector: standardized it is {float(wide[i, j]):.3g}, beyond the range of "
                f"its {np.dtype(dtype)} model ({len(rows)} row(s) affected, first: "
                f"{', '.join(map(str, rows[:5]))}).")
        return z

    def _score(self, X) -> np.ndarray:
        """score_samples of a validated array X."""
        z = self._standardize(X)
        # A forward pass only (no gradient), through the model's compiled `log_density`, in
        # batches of one fixed shape: the rows are zero-padded to whole batches, so that a
        # row's score does not depend on which other rows are scored with it (float32 matrix
        # products round differently for different batch sizes).
        n = len(z)
        padded = np.zeros((-(-n // _SCORE_BATCH) * _SCORE_BATCH, z.shape[1]), dtype=z.dtype)
        padded[:n] = z
        f = self.estimator_.log_density(padded, batch_size=_SCORE_BATCH)[:n]
        return check_finite_results(f.astype(np.float64) + self.log_density_shift_,
                                    "anomaly score")

    def decision_function(self, X) -> np.ndarray:
        """score_samples(X) − offset_: negative for outliers, [n]."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """+1 for inliers (decision_function ≥ 0), −1 for outliers: [n] int."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def predict_proba(self, X, method="linear") -> np.ndarray:
        """Outlier probabilities in pyod's convention: [n, 2], columns (P(inlier),
        P(outlier)), from the outlier score o(x) = −score_samples(x) relative to the training
        rows' scores `decision_scores_` (o_train):

        - "linear": P(outlier) = (o − min o_train) / (max o_train − min o_train), clipped to
          [0, 1] (pyod's min–max conversion);
        - "unify": P(outlier) = erf((o − mean o_train) / (std o_train · √2)), clipped to
          [0, 1] (Kriegel et al., 2011, "Interpreting and unifying outlier scores").
        """
        check_is_fitted(self)
        if not hasattr(self, "decision_scores_"):
            raise ValueError("This detector was saved by dde 0.1 without its training scores; "
                             "refit it to use predict_proba.")
        if method not in ("linear", "unify"):
            raise ValueError(f"method must be 'linear' or 'unify', got {method!r}.")
        outlier = -self.score_samples(X)
        train = self.decision_scores_
        if method == "linear":
            span = float(train.max() - train.min()) or 1.0  # (MinMaxScaler's zero range)
            p = (outlier - float(train.min())) / span
        else:
            spread = float(train.std()) or 1.0
            p = special.erf((outlier - float(train.mean())) / (spread * math.sqrt(2.0)))
        p = np.clip(p, 0.0, 1.0)
        return np.column_stack([1.0 - p, p])

    def explain(self, X, baseline=None) -> np.ndarray:
        """Per-feature contributions to each row's outlier score: [n, n_features].

        Integrated gradients (Sundararajan et al., 2017) of the log-density f along the
        straight path from the baseline z₀ to the row z (standardized units):

            c_j(x) = −(z_j − z₀_j) ∫₀¹ ∂f/∂z_j(z₀ + α(z − z₀)) dα,

        computed with a 32-node Gauss–Legendre rule. They sum to the row's outlier score
        relative to the baseline's: Σ_j c_j(x) = score_samples(baseline) − score_samples(x)
        (to quadrature accuracy), so positive entries are the features that make the row
        less dense than the baseline, and a feature equal to the baseline's contributes 0.
        The default baseline is `baseline_`, the most normal training row; pass any row
        ([n_features], original units) instead.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        if baseline is None:
            if not hasattr(self, "baseline_"):
                raise ValueError("This detector was saved by dde 0.1 without a baseline "
                                 "row; pass baseline= or refit it.")
            baseline = self.baseline_
        baseline = np.asarray(baseline, dtype=np.float64)
        if baseline.shape != (self.n_features_in_,):
            raise ValueError(f"baseline must be one row of {self.n_features_in_} features, "
                             f"got shape {baseline.shape}.")
        if not np.isfinite(baseline).all():
            raise ValueError("baseline has non-finite values.")
        z = self._standardize(X).astype(np.float64)
        z0 = self._standardize(baseline[None], "baseline")[0].astype(np.float64)
        nodes, weights = np.polynomial.legendre.leggauss(_EXPLAIN_NODES)
        alphas, weights = 0.5 * (nodes + 1.0), 0.5 * weights  # on [0, 1]
        dtype = self.estimator_.compute_dtype
        out = np.empty_like(z)
        rows = max(1, _SCORE_BATCH // _EXPLAIN_NODES)
        for i in range(0, len(z), rows):
            delta = z[i:i + rows] - z0                               # [m, d]
            path = z0 + alphas[:, None, None] * delta[None]           # [k, m, d]
            grads = self.estimator_.score(path.reshape(-1, z.shape[1]).astype(dtype),
                                          batch_size=_SCORE_BATCH)
            mean_grad = np.tensordot(weights, grads.reshape(path.shape), axes=1)  # [m, d]
            out[i:i + rows] = -delta * mean_grad
        return check_finite_results(out, "explanation")

    # -------------------------------------------------------------------------- persistence
    def export(self, path, progress=False):
        """Write the fitted detector as a SavedModel for serving without Python or dde into
        the folder `path`: signatures `score_samples`, `decision_function` and `predict`,
        each taking x [batch, n_features] float32 in the original units (standardization
        and threshold included); see `dde.export`. Rows the detector would refuse (values
        beyond its float32 model) give non-finite scores there."""
        check_is_fitted(self)
        return export_detector(self, path, progress=progress)

    def save(self, path) -> None:
        """Write the fitted detector (model, scaler, threshold, parameters) to one zip file,
        atomically: `estimator.keras` (the Keras model), `decision_scores.npy` (the training
        rows' outlier scores, for predict_proba) and `detector.json` (the rest)."""
        check_is_fitted(self)
        params = self.get_params(deep=False)
        params.pop("estimator")
        if not (params["random_state"] is None
                or isinstance(params["random_state"], numbers.Integral)):
            params["random_state"] = None  # a RandomState instance is not serializable
        state = {
            "format": _FORMAT, "version": _FORMAT_VERSION,
            "params": _jsonable(params),
            "estimator_given": self.estimator is not None,
            "n_features_in_": int(self.n_features_in_),
            "feature_names_in_": (list(map(str, self.feature_names_in_))
                                  if hasattr(self, "feature_names_in_") else None),
            "offset_": self.offset_, "noise_std_": self.noise_std_,
            "threshold_source_": self.threshold_source_,
            "baseline_": self.baseline_.tolist(),
            "n_steps_": int(self.n_steps_), "best_step_": int(self.best_step_),
            "activation_": self.activation_,
            "activation_val_losses_": _jsonable(self.activation_val_losses_),
            "history_": self.history_,
            "scaler": None if self.scaler_ is None else {
                key: np.asarray(getattr(self.scaler_, key), dtype=np.float64).tolist()
                for key in ("mean_", "var_", "scale_")} | {
                "n_samples_seen_": int(np.max(self.scaler_.n_samples_seen_))},
        }
        with atomic_path(path) as tmp, tempfile.TemporaryDirectory() as tmpdir:
            keras_file = os.path.join(tmpdir, _MODEL_FILE)
            self.estimator_.save(keras_file)
            scores_file = os.path.join(tmpdir, _SCORES_FILE)
            np.save(scores_file, self.decision_scores_, allow_pickle=False)
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.write(keras_file, _MODEL_FILE)
                archive.write(scores_file, _SCORES_FILE)
                archive.writestr(_STATE_FILE, json.dumps(state, indent=1))

    @classmethod
    def load(cls, path) -> "DDEAnomalyDetector":
        """Read a detector written by `save` (Keras safe mode; no pickled code is run).

        Raises ValueError naming the file when it is missing, not a saved detector, or
        damaged: unreadable JSON, a missing or ill-typed entry, a scaler or model whose
        feature count differs from the detector's.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"Detector file not found: {path}")
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if _STATE_FILE not in names or _MODEL_FILE not in names:
                    raise ValueError(f"{path} is not a saved {cls.__name__} (it lacks "
                                     f"{_STATE_FILE} / {_MODEL_FILE}).")
                try:
                    state = json.loads(archive.read(_STATE_FILE).decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise ValueError(f"{path} is damaged: its {_STATE_FILE} is not valid "
                                     f"JSON ({err}).") from err
                scores = None
                if isinstance(state, dict) and state.get("version") == _FORMAT_VERSION:
                    if _SCORES_FILE not in names:
                        raise ValueError(f"{path} is damaged: it lacks {_SCORES_FILE}.")
                    try:
                        with archive.open(_SCORES_FILE) as handle:
                            scores = np.load(io.BytesIO(handle.read()), allow_pickle=False)
                    except ValueError as err:
                        raise ValueError(f"{path} is damaged: its {_SCORES_FILE} does not "
                                         f"load ({err}).") from err
                with tempfile.TemporaryDirectory() as tmpdir:
                    archive.extract(_MODEL_FILE, tmpdir)
                    keras_file = os.path.join(tmpdir, _MODEL_FILE)
                    check_keras_archive(keras_file, f"{path}: its {_MODEL_FILE}")
                    try:
                        model = keras.saving.load_model(keras_file, compile=False,
                                                        safe_mode=True)
                    except Exception as err:  # corrupt archives, unknown classes, ...
                        raise ValueError(f"{path} is damaged: its {_MODEL_FILE} does not "
                                         f"load ({' '.join(str(err).split())})") from err
        except (zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"{path} is not a saved {cls.__name__}: {err}") from err
        state = _checked_state(state, model, path)
        if scores is not None and (scores.ndim != 1 or not len(scores)
                                   or not np.issubdtype(scores.dtype, np.floating)
                                   or not np.isfinite(scores).all()):
            raise ValueError(f"{path} is damaged: its {_SCORES_FILE} must hold a non-empty, "
                             f"finite float vector, got {scores.dtype} {scores.shape}.")
        return cls._from_state(state, model, path, scores)

    @classmethod
    def _from_state(cls, state, model, path, scores=None) -> "DDEAnomalyDetector":
        try:
            det = cls(**state["params"])
        except TypeError as err:
            raise ValueError(f"{path} is damaged: its parameters do not fit "
                             f"{cls.__name__} ({err}).") from err
        if state["estimator_given"]:
            det.estimator = model
        det.estimator_ = model
        det.n_features_in_ = state["n_features_in_"]
        if state["feature_names_in_"] is not None:
            det.feature_names_in_ = np.asarray(state["feature_names_in_"], dtype=object)
        if state["scaler"] is None:
            det.scaler_ = None
        else:
            scaler = StandardScaler()
            for key in ("mean_", "var_", "scale_"):
                setattr(scaler, key, np.asarray(state["scaler"][key], dtype=np.float64))
            scaler.n_features_in_ = det.n_features_in_
            scaler.n_samples_seen_ = np.int64(state["scaler"]["n_samples_seen_"])
            det.scaler_ = scaler
        for key in ("offset_", "noise_std_"):
            setattr(det, key, float(state[key]))
        det.n_steps_ = int(state["n_steps_"])
        det.best_step_ = int(state["best_step_"])
        det.activation_ = state.get("activation_")
        det.activation_val_losses_ = dict(state.get("activation_val_losses_") or {})
        det.history_ = state["history_"]
        det._set_shift()
        # version 1 files predate these; their detectors score and predict, but need
        # baseline= to explain and a refit for predict_proba
        det.threshold_source_ = state.get("threshold_source_", "training")
        if state.get("baseline_") is not None:
            det.baseline_ = np.asarray(state["baseline_"], dtype=np.float64)
        if scores is not None:
            det._set_pyod_attributes(scores.astype(np.float64))
        else:
            det.threshold_ = -det.offset_
        return det


def _checked_state(state, model, path) -> dict:
    """The detector state read from `path`, checked entry by entry (ValueError naming the
    file and the entry), so that a damaged file never loads into a detector that scores
    silently wrong."""
    def damaged(problem):
        return ValueError(f"{path} is damaged: {problem}.")

    if not isinstance(state, dict):
        raise damaged(f"its {_STATE_FILE} holds no object")
    if state.get("format") != _FORMAT or state.get("version") not in _READABLE_VERSIONS:
        raise ValueError(f"{path} holds format {state.get('format')!r} version "
                         f"{state.get('version')!r}; expected {_FORMAT!r} version "
                         f"{' or '.join(map(str, _READABLE_VERSIONS))}.")
    if not isinstance(model, EnergyModel):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a dde energy model.")

    def entry(key, ok, expected, container=state, where=""):
        if key not in container:
            raise damaged(f"{where}'{key}' is missing")
        value = container[key]
        if not ok(value):
            raise damaged(f"{where}'{key}' must be {expected}, got {repr(value)[:60]}")
        return value

    def integer(low):
        return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low

    def finite(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    entry("params", lambda v: isinstance(v, dict), "an object")
    entry("estimator_given", lambda v: isinstance(v, bool), "true or false")
    d = entry("n_features_in_", integer(1), "a positive integer")
    entry("feature_names_in_", lambda v: v is None or (
        isinstance(v, list) and len(v) == d and all(isinstance(n, str) for n in v)),
        f"null or a list of {d} names")
    entry("offset_", finite, "a finite number")
    if state["version"] >= 2:
        entry("threshold_source_", lambda v: v in ("held-out", "training"),
              "'held-out' or 'training'")
        entry("baseline_", lambda v: isinstance(v, list) and len(v) == d
              and all(finite(a) for a in v), f"a list of {d} finite numbers")
    entry("noise_std_", lambda v: finite(v) and v > 0, "a positive number")
    entry("n_steps_", integer(0), "an integer ≥ 0")
    entry("best_step_", integer(0), "an integer ≥ 0")
    entry("history_", lambda v: isinstance(v, dict), "an object")
    scaler = entry("scaler", lambda v: v is None or isinstance(v, dict), "null or an object")
    if scaler is not None:
        for key, ok, kind in (("mean_", lambda a: True, "finite"),
                              ("var_", lambda a: a >= 0, "finite, ≥ 0"),
                              ("scale_", lambda a: a > 0, "finite, > 0")):
            entry(key, lambda v, ok=ok: isinstance(v, list) and len(v) == d
                  and all(finite(a) and ok(a) for a in v),
                  f"a list of {d} numbers ({kind})", scaler, "scaler ")
        entry("n_samples_seen_", integer(1), "a positive integer", scaler, "scaler ")
    if not model.built or model.input_dim != d:
        raise damaged(f"its model takes {getattr(model, 'input_dim', 'an unknown number of')} "
                      f"features, but the detector {d}")
    return state


def heldout_kde_bandwidth(z_fit, z_held=None, grid=None, rng=None, max_fit=5000,
                          max_held=1000) -> float:
    """The bandwidth of `grid` maximizing the mean held-out log-likelihood of a Gaussian KDE.

    z_fit [n, d]: the kernel centres; z_held [m, d]: held-out rows (None: leave-one-out on
    z_fit). Up to `max_fit` centres and `max_held` held-out rows (random subsets) are used.
    ℓ(h) = mean_i logsumexp_j(−‖z_i − c_j‖² / 2h²) − d·log h, up to constants in h.
    """
    from scipy.special import logsumexp

    rng = check_random_state(rng)
    grid = np.asarray(AUTO_GRID_DEFAULT if grid is None else grid, dtype=np.float64)
    z_fit = np.asarray(z_fit, dtype=np.float64)
    if len(z_fit) > max_fit:
        z_fit = z_fit[rng.choice(len(z_fit), max_fit, replace=False)]
    loo = z_held is None
    if loo:
        if len(z_fit) < 2:
            return float(grid[-1])
        z_held = z_fit[:max_held]
    else:
        z_held = np.asarray(z_held, dtype=np.float64)
        if len(z_held) > max_held:
            z_held = z_held[rng.choice(len(z_held), max_held, replace=False)]
    sq = (np.sum(z_held**2, 1)[:, None] + np.sum(z_fit**2, 1)[None, :]
          - 2.0 * z_held @ z_fit.T)
    np.maximum(sq, 0.0, out=sq)
    if loo:
        sq[np.arange(len(z_held)), np.arange(len(z_held))] = np.inf
    d = z_fit.shape[1]
    ll = [np.mean(logsumexp(-sq / (2.0 * h * h), axis=1)) - d * math.log(h) for h in grid]
    return float(grid[int(np.argmax(ll))])


AUTO_GRID_DEFAULT = DDEAnomalyDetector.AUTO_NOISE_GRID




def _seeded_init(network, seed: int) -> None:
    """Re-draw the Dense kernels of `network` (Glorot-uniform) from `seed`: reproducible
    initialization without touching Keras' global random state."""
    for i, layer in enumerate(network.layers):
        if isinstance(layer, keras.layers.Dense) and layer.name != "residual":  # (stays 0)
            init = keras.initializers.GlorotUniform(seed=seed + i)
            layer.kernel.assign(init(layer.kernel.shape, dtype=layer.kernel.dtype))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"Cannot save parameter value {obj!r} of type {type(obj).__name__}.")
