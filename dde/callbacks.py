"""Keras callbacks for energy models: model selection on the validation log-likelihood, and
wall time per epoch (`EpochTimer`).

`ValidationLogLikelihood` normalizes the model at the end of every epoch and logs the
validation average log-likelihood (ALL), so that Keras' own callbacks select on it:

    model.fit(train, epochs=30, steps_per_epoch=500, callbacks=[
        dde.callbacks.ValidationLogLikelihood(x_val),
        keras.callbacks.EarlyStopping("val_all", mode="max", patience=8,
                                      restore_best_weights=True)])

The normalization is stored in the model's variables (`model.log_z`, …), so the weights that
EarlyStopping restores come with their own log Ẑ. Cheap for a base-density model, whose
default proposal is its base: importance sampling with weights exp g, on base draws made at
the first evaluation and kept while the proposal is unchanged (`dde.partition.
model_proposal_draws`; drawn again when σ or the base changes) — the samples the fixed seed
would draw again, without the cost of drawing (d passes per draw of an autoregressive flow
base).
"""
from __future__ import annotations

import math
import time
import warnings

import keras
import numpy as np

import dde.partition as partition
from dde._validation import check_data, check_positive


class ValidationLogLikelihood(keras.callbacks.Callback):
    """Log `val_all` = mean_i f(x_i) − log Ẑ over x_val [n, d] at every epoch end.

    log Ẑ is `model.normalize(num_samples=num_samples, seed=seed, **normalize_options)`
    (default: importance sampling under the model's default proposal; the same seed at every
    epoch, so that epochs are compared on common random numbers — with the default proposal
    and method the draws are made once and reused while the proposal stays the same). Also
    logged: `val_log_z`,
    `val_log_z_stderr`, `val_ess`, `val_pareto_k` and `val_all_reliable` (1/0). An estimate
    that `dde.partition` marks unreliable (k̂ or ESS) logs `val_all = −inf`: a log Ẑ biased
    low would make that epoch look best. `history` keeps one dict per epoch.
    """

    def __init__(self, x_val, num_samples: int = 50_000, seed: int = 0,
                 **normalize_options):
        super().__init__()
        self.x_val = check_data(x_val, name="x_val", owner="ValidationLogLikelihood")
        self.num_samples = int(check_positive(num_samples, "num_samples", integer=True))
        self.seed = seed
        self.normalize_options = normalize_options
        self.history: list[dict] = []
        #: (proposal, draws) of the default proposal once drawn (`_reused_draws`), else None
        self.proposal_draws = None

    def _reused_draws(self) -> dict:
        """normalize options that reuse the default proposal's draws (empty when the options
        choose another method or proposal, or the model has no default proposal)."""
        opts = self.normalize_options
        if (opts.get("method", "is") != "is" or opts.get("proposal", "default") != "default"
                or opts.get("x_train") is not None or opts.get("jit_compile")
                or getattr(self.model, "base", None) is None):
            return {}
        proposal = self.model.default_proposal(opts.get("noise_std"))
        if self.proposal_draws is None or self.proposal_draws[0] is not proposal:
            self.proposal_draws = partition.model_proposal_draws(
                self.model, self.num_samples, self.seed, opts.get("noise_std"),
                opts.get("batch_size"))
        return {"proposal": self.proposal_draws[0], "draws": self.proposal_draws[1]}

    def evaluate(self) -> dict:
        """Normalize the model (stored in it) and return the logged values."""
        model = self.model
        options = {**self.normalize_options, **self._reused_draws()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", partition.UnreliableEstimateWarning)
            warnings.simplefilter("ignore", partition.LowEffectiveSampleSizeWarning)
            z = model.normalize(num_samples=self.num_samples, seed=self.seed, **options)
        mean_f = float(np.mean(model.log_density(self.x_val).astype(np.float64)))
        val_all = mean_f - z.log_z if z.reliable else -math.inf
        return {"val_all": val_all, "val_log_z": z.log_z, "val_log_z_stderr": z.stderr,
                "val_ess": z.ess, "val_pareto_k": z.pareto_k,
                "val_all_reliable": float(z.reliable)}

    def on_epoch_end(self, epoch, logs=None):
        values = self.evaluate()
        self.history.append({"epoch": epoch, **values})
        if logs is not None:
            logs.update(values)


class EpochTimer(keras.callbacks.Callback):
    """Logs `epoch_seconds`, the wall time of each epoch (training steps and validation), so
    that it appears in `History.history["epoch_seconds"]`; the first epoch includes tracing
    and compilation."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start
