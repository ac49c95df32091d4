"""Serving without Python: density models and detectors as SavedModels with signatures.

A SavedModel runs in TensorFlow Serving, TFLite (after conversion), TensorFlow's C++, Java
or JavaScript runtimes, or `tf.saved_model.load` in a Python process without `dde`.
The graphs are built with Keras' `keras.export.ExportArchive` from the public model
protocol (`log_density_fn(σ)`, `log_density_and_score(x, σ)`), so any model that satisfies
it exports without changes.

`export_density(model, path, noise_std=None)` — signatures, each taking `x` [batch, d]
float32:

- `log_density` → {"log_density": [batch]}: f(x) at σ (a NoiseConditionalDDE: at
  `noise_std`, default sigma_min);
- `score` → {"score": [batch, d]}: ∇ₓf(x);
- `log_prob` → {"log_prob": [batch]}: f(x) − log Ẑ, only when the model is normalized at
  that σ (its log Ẑ is a constant of the graph).

`export_detector(detector, path)` — for a fitted `DDEAnomalyDetector`, signatures taking
`x` [batch, n_features] float32 in the original units (the standardization, the
log-density shift and the threshold are part of the graph):

- `score_samples` → {"score_samples": [batch]} (higher = more normal);
- `decision_function` → {"decision_function": [batch]} (score_samples − offset_);
- `predict` → {"predict": [batch] int32} (+1 inlier, −1 outlier).

The first signature is also `serving_default`. The SavedModel is written to a folder beside
`path` and swapped in whole (`dde._io.replaced_folder`); `path` must be a new or empty
folder, or one an earlier export wrote (it holds `saved_model.pb`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from dde._io import replaced_folder
from dde.progress import progress_bar
from dde.protocols import input_dim_of

#: A file written beside the SavedModel: what was exported, and the signatures.
MANIFEST = "dde_export.json"


def _archive(model):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    return archive


def _spec(d):
    return [tf.TensorSpec([None, int(d)], tf.float32, name="x")]


def density_functions(model, noise_std=None) -> dict:
    """{signature name: traceable function x [batch, d] float32 → {output: tensor}} of an
    energy model at noise level `noise_std` (see the module docstring)."""
    sigma = model.resolve_noise_std(noise_std)
    f = model.log_density_fn(sigma)
    dtype = getattr(model, "compute_dtype", "float32")

    def log_density(x):
        return {"log_density": tf.cast(f(x), tf.float32)}

    def score(x):
        xc = tf.cast(x, dtype)
        _, grad = model.log_density_and_score(xc, noise_std=sigma)
        return {"score": tf.cast(grad, tf.float32)}

    functions = {"log_density": log_density, "score": score}
    log_z = _log_partition_at(model, sigma)
    if log_z is not None:
        def log_prob(x):
            return {"log_prob": tf.cast(f(x), tf.float64) - tf.constant(log_z, tf.float64)}

        functions["log_prob"] = log_prob
    return functions


def _log_partition_at(model, sigma):
    """log Ẑ of the model at σ, or None (not normalized, or normalized at another σ)."""
    log_z = getattr(model, "log_z", None)
    if log_z is None or not np.isfinite(float(np.asarray(log_z))):
        return None
    stored = float(np.asarray(getattr(model, "log_z_noise_std", np.nan)))
    if np.isfinite(stored) and not np.isclose(stored, sigma, rtol=1e-5):
        return None
    return float(np.asarray(log_z))


def _write(archive, functions, d, path, manifest, progress):
    """Add the endpoints, write the SavedModel and the manifest into the folder `path`."""
    bar = progress_bar(len(functions) + 1, "step", progress)
    for k, (name, fn) in enumerate(functions.items()):
        archive.add_endpoint(name, fn, input_signature=_spec(d))
        if bar is not None:
            bar.update(k + 1)
    with replaced_folder(path) as folder:
        archive.write_out(str(folder), verbose=False)
        (folder / MANIFEST).write_text(json.dumps(
            {**manifest, "signatures": list(functions), "input": {"name": "x",
                                                                   "shape": [None, int(d)],
                                                                   "dtype": "float32"}},
            indent=2) + "\n", encoding="utf-8")
    if bar is not None:
        bar.update(len(functions) + 1)
    return Path(path)


def export_density(model, path, noise_std=None, progress=False) -> Path:
    """Write `model` (an energy model: the `dde.protocols.EnergyModelLike` protocol) as a
    SavedModel with the signatures log_density, score and (when normalized) log_prob at
    noise level `noise_std` into the folder `path`; returns it."""
    d = input_dim_of(model)
    if d is None:
        raise ValueError(f"This {type(model).__name__} is not built: fit it (or call "
                         "ensure_built) before exporting.")
    model.ensure_built(d)
    functions = density_functions(model, noise_std)
    sigma = model.resolve_noise_std(noise_std)
    manifest = {"kind": "density", "model": type(model).__name__, "noise_std": sigma,
                "normalized": "log_prob" in functions}
    return _write(_archive(model), functions, d, path, manifest, progress)


def detector_functions(model, mean, scale, shift, offset) -> dict:
    """{signature name: function} of a detector whose energy model scores standardized
    rows z = (x − mean) / scale: score = f(z) + shift; decision = score − offset."""
    f = model.log_density_fn(None)
    dtype = getattr(model, "compute_dtype", "float32")
    mean64 = tf.constant(np.asarray(mean, np.float64))
    scale64 = tf.constant(np.asarray(scale, np.float64))

    def score_samples(x):
        z = (tf.cast(x, tf.float64) - mean64) / scale64
        score = tf.cast(f(tf.cast(z, dtype)), tf.float64) + tf.constant(shift, tf.float64)
        return {"score_samples": score}

    def decision_function(x):
        s = score_samples(x)["score_samples"]
        return {"decision_function": s - tf.constant(offset, tf.float64)}

    def predict(x):
        dec = decision_function(x)["decision_function"]
        return {"predict": tf.where(dec < 0, tf.constant(-1, tf.int32),
                                    tf.constant(1, tf.int32))}

    return {"score_samples": score_samples, "decision_function": decision_function,
            "predict": predict}


def export_detector(detector, path, progress=False) -> Path:
    """Write a fitted `DDEAnomalyDetector` as a SavedModel with the signatures
    score_samples, decision_function and predict into the folder `path`; returns it."""
    model = detector.estimator_
    d = int(detector.n_features_in_)
    scaler = detector.scaler_
    mean = np.zeros(d) if scaler is None else scaler.mean_
    scale = np.ones(d) if scaler is None else scaler.scale_
    functions = detector_functions(model, mean, scale, float(detector.log_density_shift_),
                                   float(detector.offset_))
    names = getattr(detector, "feature_names_in_", None)
    manifest = {"kind": "detector", "model": type(model).__name__,
                "noise_std": float(detector.noise_std_), "offset": float(detector.offset_),
                "feature_names": None if names is None else [str(n) for n in names]}
    return _write(_archive(model), functions, d, path, manifest, progress)
