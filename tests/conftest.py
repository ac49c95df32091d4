"""Shared test setup: quiet TensorFlow, headless matplotlib, deterministic seeds, and tiny
saved models for the command-line tests (made once per session)."""
import os
import shutil
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    """A fixed-seed NumPy generator."""
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """A folder of tiny saved inputs for the command line, made once: `model.keras` (a 2-D
    DDE, 1 × 8, one epoch), `normalized.keras` (the same with log Ẑ set), `detector.zip` (a
    detector on 2-D data, 20 steps), `other.keras` (a plain Keras model), `train.npy` and
    `train.csv` (200 × 2). Copy what a test changes; never write here."""
    import keras

    import dde

    root = tmp_path_factory.mktemp("tiny_artifacts")
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(200, 2)).astype("float32")
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=1, width=8),
                                          noise_std=0.3, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, epochs=1, batch_size=64, verbose=0)
    model.save(root / "model.keras")
    model.set_log_partition(1.5, 0.01, 500.0)
    model.save(root / "normalized.keras")
    detector = dde.DDEAnomalyDetector(hidden_layers=1, width=8, max_steps=20,
                                      validation_interval=10, batch_size=64,
                                      activation="softplus", noise_std=0.5, random_state=0)
    detector.fit(x)
    detector.save(root / "detector.zip")
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    plain.save(root / "other.keras")
    np.save(root / "train.npy", x)
    np.savetxt(root / "train.csv", x, delimiter=",")
    return root


@pytest.fixture
def read_only_dir(tmp_path):
    """A factory of folders this process cannot write in: mode 0o555, or for root (who
    writes anyway) the immutable attribute (`chattr +i`); skips where neither works."""
    made = []

    def make(name="read_only", files=()):
        folder = tmp_path / name
        folder.mkdir()
        for file in files:
            (folder / file).write_text("keep\n")
        lock_folder(folder)
        made.append(folder)
        return folder

    yield make
    for folder in made:
        unlock_folder(folder)


def lock_folder(folder) -> None:
    """Make `folder` unwritable for this process (see `read_only_dir`)."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder read-only for root here (no chattr +i)")


def unlock_folder(folder) -> None:
    if os.geteuid() != 0:
        os.chmod(folder, 0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
