"""Training beyond one process: `tf.distribute.MultiWorkerMirroredStrategy` from `TF_CONFIG`,
checkpoints that let a killed run resume, and a fingerprint of a model's weights.

Every process of a multi-worker run gets the same program and its own `TF_CONFIG`
(`{"cluster": {"worker": ["host0:port", "host1:port", ...]}, "task": {"type": "worker",
"index": i}}`); worker 0 is the chief. What `dde` does for such a run:

- the denoising score-matching loss of each replica is divided by the number of replicas in
  sync, over all workers (`dde.training`), since gradients are summed;
- the noise of step k on global replica r comes from the seed (model seed, k·R + r): every
  replica of every worker draws its own noise, and a run is reproducible;
- each worker reads its share of the training rows (`dde.streaming`, shard = task index),
  and computes the data statistics on the whole training split, so they are identical;
- the σ schedule counts global steps, the same on every worker (steps per epoch come from
  the global row count and batch size).

`TrainingCheckpoint` saves model, optimizer and epoch with `tf.train.CheckpointManager` at
the end of every epoch (the chief into the checkpoint folder, the others into temporaries
of their own, as TensorFlow's multi-worker recipe prescribes); `restore()` before `fit`
continues a killed run from its last completed epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from dde._io import TEMP_PREFIX


class TaskInfo(NamedTuple):
    """This process's place in a cluster: number of workers, its index, whether it is the
    chief (index 0, which writes the outputs)."""
    num_workers: int
    index: int
    is_chief: bool


def task_info(environ=None) -> TaskInfo:
    """The worker count and index `TF_CONFIG` gives (one worker, index 0, without it).
    ValueError naming the problem for a malformed `TF_CONFIG`."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return TaskInfo(1, 0, True)
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config.get("task", {})
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"TF_CONFIG is not a valid cluster description ({err!r}); expected "
                         '{"cluster": {"worker": [...]}, "task": {"type": "worker", '
                         '"index": i}}.') from None
    if not isinstance(workers, list) or not workers:
        raise ValueError("TF_CONFIG's cluster lists no workers.")
    if kind not in ("worker", "chief") or not 0 <= index < len(workers):
        raise ValueError(f"TF_CONFIG's task must be a worker with an index in "
                         f"[0, {len(workers)}), got {kind!r} {index}.")
    if "chief" in config["cluster"]:
        raise ValueError("TF_CONFIG with a separate 'chief' task is not supported: list every "
                         "process as a worker (worker 0 is the chief).")
    return TaskInfo(len(workers), index, index == 0)


def strategy_for(info: TaskInfo | None = None):
    """`MultiWorkerMirroredStrategy` when `TF_CONFIG` describes several workers, else the
    default strategy. Create it first thing: before any other TensorFlow work."""
    info = task_info() if info is None else info
    if info.num_workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def weights_digest(model) -> str:
    """SHA-256 of all the model's variables (names, shapes and values): equal digests mean
    identical weights, as every worker of a synchronous run must end with."""
    h = hashlib.sha256()
    for v in model.variables:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(v.value))
        h.update(f"{v.path}:{value.dtype}:{value.shape};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


class TrainingCheckpoint(keras.callbacks.Callback):
    """Checkpoints of the training state — model variables (σ and data statistics
    included), optimizer state (its step counter drives the noise seeds and the learning
    rate) and the number of completed epochs — with `tf.train.CheckpointManager`, written at
    the end of every epoch into `directory` (keeping `max_to_keep`).

    Call `restore()` after building and compiling the model and before `fit`: it loads the
    latest checkpoint, if any, and returns the epochs already done, to pass as
    `fit(initial_epoch=...)`. Under a multi-worker strategy every worker must save (the
    chief into `directory`, the others into temporaries removed right after), and every
    worker restores from `directory`, which must be shared storage on a real cluster.
    """

    def __init__(self, model, directory, max_to_keep: int = 2, info: TaskInfo | None = None):
        super().__init__()
        self.directory = os.fspath(directory)
        self.info = task_info() if info is None else info
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                              epoch=self.epoch)
        self._max_to_keep = int(max_to_keep)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self._write_directory(),
                                                  max_to_keep=self._max_to_keep)

    def _write_directory(self) -> str:
        if self.info.is_chief:
            return self.directory
        return os.path.join(self.directory, f"{TEMP_PREFIX}{os.getpid()}-worker-"
                                            f"{self.info.index}")

    def restore(self) -> int:
        """Load the latest checkpoint of `directory` (if any); returns the epochs done."""
        latest = tf.train.latest_checkpoint(self.directory)
        if latest is None:
            return 0
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            raise ValueError(f"The checkpoint {latest} does not match this model (another "
                             f"network or optimizer?): {' '.join(str(err).split())[:300]}. "
                             "Use another --checkpoint-dir, or remove it.") from None
        return int(self.epoch.numpy())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        if not self.info.is_chief:
            shutil.rmtree(self._write_directory(), ignore_errors=True)
            self.manager = tf.train.CheckpointManager(self.checkpoint,
                                                      self._write_directory(),
                                                      max_to_keep=self._max_to_keep)
