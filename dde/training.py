"""Keras training with a built-in loss: the base classes of every trainable model.

`BuiltinLossModel` is a `keras.Model` whose loss lives inside the model (its own
`train_step` / `test_step`); it provides what `compile` / `fit` / `evaluate` need around it:

- `fit` / `evaluate` validate arrays and datasets (NaN/inf, shape, feature count, positive
  epochs and batch size) first;
- `compile` rejects `loss=`, and a loaded model re-compiles with its saved optimizer;
- `base_config()` / `_deserialize_dtype` carry the name, trainable flag and dtype policy.

The normalizing flows of `dde.flows` (trained by maximum likelihood) derive from it directly.

`DSMModel` adds denoising score matching (DSM): subclasses implement
`dsm_loss(x, seed, sample_weight, training)` → scalar, the DSM loss of a batch x [batch, d]
with its noise (and noise levels or times) drawn from a stateless seed [2] (`training_loss`
may add to it), and

- the noise of training step k on replica r comes from the seed (model seed, k·R + r), so a
  run is reproducible and replicas under a `tf.distribute` strategy draw different noise;
  the per-replica loss is divided by the number of replicas R (gradients are summed);
- `evaluate` restarts its own seed stream on every call, so it is deterministic;
- under `MultiWorkerMirroredStrategy` (`dde.distributed`) R counts the replicas of all
  workers, the replica id is global, and the step's logs get the shape Keras reduces
  across workers (`loggable`).

Subclasses (`dde.models.EnergyModel`, `dde.score.ScoreNetwork`, `dde.flows.NormalizingFlow`)
implement `ensure_built(input_dim)`; the DSM models call `_init_training(seed)` in `__init__`.
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from dde._validation import check_data, check_positive, random_seed


def num_replicas() -> int:
    """Replicas in sync of the current `tf.distribute` strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def _replica_id():
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return tf.constant(0, tf.int64)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int64)


def first_component(element_spec):
    """The spec (or value) of x in a dataset element x, (x,), (x, y) or (x, y, w)."""
    while isinstance(element_spec, (tuple, list)):
        element_spec = element_spec[0]
    if isinstance(element_spec, dict):
        raise TypeError("A tf.data.Dataset of dicts is not supported; yield x or (x,).")
    return element_spec


def declared_input_dim(network):
    """The feature count a Keras network declares for its (first) input, or None when it
    declares none (a network built on first call)."""
    try:
        dim = network.inputs[0].shape[-1]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return None if dim is None else int(dim)


def weighted_mean(per_example, sample_weight=None):
    """Mean of per-example losses [batch], weighted by `sample_weight` ([batch] or None)."""
    if sample_weight is None:
        return tf.reduce_mean(per_example)
    w = tf.cast(tf.reshape(sample_weight, [-1]), per_example.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(w * per_example), tf.reduce_sum(w))


def loggable(logs: dict) -> dict:
    """The logs of a step as Keras can reduce them: under `MultiWorkerMirroredStrategy`
    Keras averages them across workers along axis 0, which a scalar lacks, so there each
    value gets shape [1] (Keras returns it reduced to a scalar)."""
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs


def mean_and_covariance(x) -> tuple[np.ndarray, np.ndarray]:
    """(mean [d], unbiased covariance [d, d]) in float64 of an [n, d] array or of a finite
    batched `tf.data.Dataset` (one pass). Returns None for a dataset of infinite or unknown
    cardinality (which is not iterated); raises ValueError for an empty one."""
    if isinstance(x, tf.data.Dataset):
        if x.cardinality() < 0:  # infinite or unknown: do not iterate
            return None
        total, outer, n = 0.0, 0.0, 0
        for batch in x:
            b = np.asarray(first_component(batch), dtype=np.float64)
            total = total + b.sum(0)
            outer = outer + b.T @ b
            n += b.shape[0]
        if n == 0:
            raise ValueError("The training dataset is empty.")
        mean = total / n
        cov = outer / n - np.outer(mean, mean)
        return mean, cov * n / max(n - 1, 1)
    x64 = np.asarray(x, dtype=np.float64)
    cov = np.atleast_2d(np.cov(x64, rowvar=False)) if len(x64) > 1 else np.zeros(
        (x64.shape[1],) * 2)
    return x64.mean(0), cov


class NonFiniteTrainingError(ValueError):
    """Training produced a non-finite loss or non-finite weights."""


class StopOnNonFinite(keras.callbacks.Callback):
    """End `fit` with a `NonFiniteTrainingError` naming the step when an epoch's loss or the
    model's weights are not finite (checked at every epoch end: no per-step host sync).
    `BuiltinLossModel.fit` adds it; the model is left as it is, and nothing is saved."""

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        bad_loss = loss is not None and not np.isfinite(np.asarray(loss, np.float64)).all()
        bad = [v.path for v in self.model.trainable_variables
               if not np.isfinite(np.asarray(v.numpy(), np.float64)).all()]
        if bad_loss or bad:
            step = int(self.model.optimizer.iterations.numpy())
            what = "the loss is not finite" if bad_loss else f"weights {bad[:3]} are not finite"
            raise NonFiniteTrainingError(
                f"Training diverged by step {step} (epoch {epoch + 1}): {what}. Lower the "
                "learning rate, check the data's scale, or clip gradients (e.g. Adam("
                "clipnorm=1.0)).")


#: Training steps per call of the compiled train function when `compile` is not given
#: `steps_per_execution`: one host round trip per 16 steps instead of per step. On this
#: project's 2-core reference machine `fit` of a 3×128 energy MLP then runs 1.1–1.25×
#: faster at d ≤ 20 (no gain at d = 100; `benchmarks/train_throughput.py`).
DEFAULT_STEPS_PER_EXECUTION = 16


def has_batch_hooks(callbacks) -> bool:
    """Whether any callback (other than Keras's History and progress bar, which work per
    execution) acts on single training batches — by a method of its class or, as
    `LambdaCallback` does, of the instance; such callbacks need one step per execution to
    see every batch. callbacks: a list or a `keras.callbacks.CallbackList`."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    base = keras.callbacks.Callback
    hooks = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")
    for cb in callbacks or []:
        if isinstance(cb, (keras.callbacks.History, keras.callbacks.ProgbarLogger)):
            continue
        for h in hooks:
            method = getattr(cb, h, None)
            if getattr(method, "__func__", method) is not getattr(base, h):
                return True
    return False


class BuiltinLossModel(keras.Model):
    """A Keras model with its loss built in (see module): validated `fit` / `evaluate`,
    `compile` without `loss=`, re-compilation of a loaded model with its saved optimizer.

    `compile(steps_per_execution=None)` (the default) runs `DEFAULT_STEPS_PER_EXECUTION`
    training steps per execution, or one when a callback acts on single batches (e.g.
    `NoiseStdSchedule`) or under a `tf.distribute` strategy; an explicit value is used as
    given. `jit_compile="auto"` is Keras's
    (no XLA on a CPU-only machine, where XLA's `fit` measured 0.57–1.11× the graph's here)."""

    #: Named in the error raised by `compile(loss=...)`.
    loss_description = "built-in"

    def ensure_built(self, input_dim: int):
        """Build the model for inputs of `input_dim` features if it is not built yet."""
        raise NotImplementedError

    # ------------------------------------------------------------------------ Keras hooks
    def compile(self, optimizer="adam", loss=None, steps_per_execution=None, **kwargs):
        """Like `keras.Model.compile`; the loss is built in. steps_per_execution: None
        (default) chooses per `fit` (see the class)."""
        if loss is not None:
            raise ValueError(
                f"{type(self).__name__} trains with its built-in {self.loss_description} "
                "loss; do not pass loss= to compile().")
        auto = steps_per_execution is None
        super().compile(optimizer=optimizer,
                        steps_per_execution=1 if auto else steps_per_execution, **kwargs)
        self._auto_steps_per_execution = auto
        if auto and getattr(self, "_compile_config", None) is not None:
            self._compile_config.config["steps_per_execution"] = None  # saved as "auto"

    def _choose_steps_per_execution(self, callbacks=(), step_counts=()):
        """Set steps_per_execution for this `fit` / `evaluate` (when compiled with None):
        DEFAULT_STEPS_PER_EXECUTION, reduced to a divisor of every given step count
        (steps_per_epoch, validation_steps, steps: Keras runs whole executions, so 16 steps
        per execution would overshoot 10 steps per epoch), or 1 (see the class)."""
        if not getattr(self, "_auto_steps_per_execution", False):
            return
        # Under a tf.distribute strategy Keras's multi-step loop fails on the distributed
        # iterator (Keras 3.15): one step per execution there.
        distributed = tf.distribute.has_strategy() or not isinstance(
            self.distribute_strategy, type(tf.distribute.get_strategy()))
        steps = (1 if distributed or has_batch_hooks(callbacks)
                 else DEFAULT_STEPS_PER_EXECUTION)
        for count in step_counts:
            if count is not None:
                steps = math.gcd(steps, int(count))
        if steps != self.steps_per_execution:
            self.steps_per_execution = steps
            self.train_function = self.test_function = self.predict_function = None

    def compile_from_config(self, config):
        """Re-compile a loaded model with its saved optimizer (state restored after this)."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # ---------------------------------------------------------------------- serialization
    def base_config(self) -> dict:
        """The name, trainable flag and dtype policy: the start of every `get_config`."""
        return {"name": self.name, "trainable": self.trainable,
                "dtype": keras.saving.serialize_keras_object(self.dtype_policy)}

    @staticmethod
    def _deserialize_dtype(config: dict) -> dict:
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        return config

    # --------------------------------------------------------------- fit / evaluate overrides
    def _check_fit_input(self, x, name="x"):
        """Validate fit/evaluate input; returns (validated x, feature dimension)."""
        expected = self.input_dim if self.built else None
        if isinstance(x, tf.data.Dataset):
            spec = first_component(x.element_spec)
            if spec.shape.rank != 2:
                raise ValueError(
                    f"The dataset {name} must yield batches of shape [batch, n_features]; got "
                    f"elements of shape {spec.shape}. Batch it with dataset.batch(...).")
            if not (spec.dtype.is_floating or spec.dtype.is_integer):
                raise TypeError(f"The dataset {name} has a non-numeric dtype ({spec.dtype}).")
            d = spec.shape[-1]
            if d is None:
                raise ValueError(f"The feature dimension of dataset {name} must be known.")
            if expected is not None and d != expected:
                raise ValueError(f"{name} has {d} features, but {type(self).__name__} is "
                                 f"expecting {expected} features as input.")
            return x, int(d)
        if x is None:
            raise ValueError(f"{name} is required.")
        if isinstance(x, keras.utils.PyDataset) or callable(getattr(x, "__next__", None)):
            raise TypeError(f"{name} must be a NumPy array, a tensor or a tf.data.Dataset.")
        arr = check_data(x, name=name, n_features=expected, owner=type(self).__name__,
                         dtype=self.compute_dtype)
        return arr, arr.shape[1]

    def _build_for(self, input_dim: int, name: str = "x"):
        """Build the model for `input_dim` features, refusing a count the network does not
        take with a plain message (Keras's own would carry terminal colour codes)."""
        expected = declared_input_dim(getattr(self, "network", None))
        if not self.built and expected is not None and expected != input_dim:
            raise ValueError(f"{name} has {input_dim} features, but {type(self).__name__} is "
                             f"expecting {expected} features as input (its network's).")
        self.ensure_built(input_dim)

    def _on_fit_data(self, x):
        """Hook called with the validated training data before `fit` trains."""

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`keras.Model.fit` on data x ([n, d] array or a batched `tf.data.Dataset`).

        `y` is ignored (the objective is unsupervised). Validation data (an array or a
        dataset) is scored with the same loss and fixed noise.
        """
        given = {**dict(zip(("batch_size", "epochs"), args)), **kwargs}  # Keras' order
        for key in ("batch_size", "epochs"):
            if given.get(key) is not None:
                check_positive(given[key], key, integer=True)
        x, d = self._check_fit_input(x, "x")
        self._build_for(d)
        if validation_data is not None:
            if isinstance(validation_data, tuple):
                validation_data = (self._check_fit_input(validation_data[0],
                                                         "validation_data")[0],) + tuple(
                    validation_data[1:])
            else:
                validation_data = self._check_fit_input(validation_data, "validation_data")[0]
        self._on_fit_data(x)
        callbacks = kwargs.get("callbacks")
        callbacks = list(callbacks or []) if not isinstance(
            callbacks, keras.callbacks.CallbackList) else callbacks
        if isinstance(callbacks, list) and not any(isinstance(c, StopOnNonFinite)
                                                   for c in callbacks):
            callbacks.append(StopOnNonFinite())
        kwargs["callbacks"] = callbacks
        if isinstance(x, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)  # datasets shuffle themselves
        if not self.compiled:
            self.compile(optimizer="adam")
        self._choose_steps_per_execution(callbacks, (given.get("steps_per_epoch"),
                                                     given.get("validation_steps")))
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate` on validated data x."""
        if not kwargs.get("_use_cached_eval_dataset", False):
            x, d = self._check_fit_input(x, "x")
            self._build_for(d)
            if self.compiled:
                given = {**dict(zip(("batch_size", "verbose", "sample_weight", "steps"),
                                    args)), **kwargs}
                self._choose_steps_per_execution(kwargs.get("callbacks"),
                                                 (given.get("steps"),))
        self._on_evaluate()
        return super().evaluate(x, y, *args, **kwargs)

    def _on_evaluate(self):
        """Hook called by `evaluate` once its input is validated."""

class DSMModel(BuiltinLossModel):
    """A Keras model trained with its built-in denoising score-matching loss (see module)."""

    loss_description = "denoising score-matching"

    def _init_training(self, seed: int | None):
        """Set the model seed, the loss tracker and the evaluation step counter."""
        self.seed = random_seed() if seed is None else int(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        # Counts evaluation batches so that `evaluate` draws the same noise on every call.
        self._eval_step = keras.Variable(0, dtype="int64", trainable=False, name="eval_step",
                                         aggregation="only_first_replica")

    def dsm_loss(self, x, seed, sample_weight=None, training=False):
        raise NotImplementedError

    def training_loss(self, x, seed, sample_weight=None, training=False):
        """The loss `fit` minimizes and `evaluate` reports: the DSM loss, unless a subclass
        adds to it (e.g. the likelihood objective of base-density energies)."""
        return self.dsm_loss(x, seed, sample_weight, training)

    # ------------------------------------------------------------------------ Keras hooks
    @property
    def metrics(self):
        return [self.loss_tracker]

    def _step_seed(self, step):
        step = tf.cast(step, tf.int64) * num_replicas() + _replica_id()
        return tf.stack([tf.constant(self.seed, tf.int64), step])

    def train_step(self, data):
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, self.compute_dtype)
        seed = self._step_seed(self.optimizer.iterations)
        with tf.GradientTape() as tape:
            loss = self.training_loss(x, seed, sample_weight, training=True)
            # Gradients are summed over replicas: scale the per-replica mean accordingly.
            scaled = loss / tf.cast(num_replicas(), loss.dtype)
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        self.loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        return loggable(self._logs())

    def test_step(self, data):
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, self.compute_dtype)
        step = self._eval_step.assign_add(1) - 1
        # A separate stream from training: the seed's second word is negative.
        seed = self._step_seed(step) * tf.constant([1, -1], tf.int64) - tf.constant([0, 1],
                                                                                    tf.int64)
        loss = self.training_loss(x, seed, sample_weight, training=False)
        self.loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        return loggable({"loss": self.loss_tracker.result()})

    def _logs(self):
        """What a training step reports (subclasses may add, e.g., the noise level)."""
        return {"loss": self.loss_tracker.result()}

    def _on_evaluate(self):
        """`evaluate` scores the loss on x with noise fixed by the model's seed: its seed
        stream restarts on every call, so repeated calls on the same data agree."""
        self._eval_step.assign(0)
