"""Tests of dde.plotting: every function returns a headless Figure with the expected axes,
draws the values it is given, and saves to PNG."""
import functools

import keras
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.quiver import Quiver

import dde
from dde import plotting
from dde.datasets import toy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _save(fig, path):
    fig.savefig(path, dpi=40)
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def trained():
    """A small DDE trained for 3 epochs on 8gaussians with a DensitySnapshots callback."""
    keras.utils.set_random_seed(0)
    x = toy.sample("8gaussians", 512, seed=0)
    model = dde.DenoisingDensityEstimator(dde.nets.energy_mlp(2, depth=2, width=16),
                                          noise_std=0.3, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    snapshots = plotting.DensitySnapshots(resolution=12, every=2)
    history = model.fit(x, epochs=3, batch_size=256, verbose=0, callbacks=[snapshots],
                        validation_data=(toy.sample("8gaussians", 128, seed=1),))
    return model, history, snapshots


def _true(x):
    return toy.log_density("8gaussians", x, noise_std=0.2)


def test_plot_density_of_a_function_is_a_normalized_heatmap(tmp_path):
    fig = plotting.plot_density(_true, resolution=60, data=toy.sample("8gaussians", 100, 0))
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    image = [a for a in fig.axes[0].get_children() if isinstance(a, AxesImage)][0]
    values = np.asarray(image.get_array())
    cell = (8 / 59) ** 2
    assert values.shape == (60, 60)
    assert values.sum() * cell == pytest.approx(1.0, rel=1e-6)
    _save(fig, tmp_path / "density.png")
    fig = plotting.plot_density(_true, resolution=30, kind="log_density", colorbar=True)
    assert len(fig.axes) == 2
    image = fig.axes[0].images[0]
    assert image.get_clim()[1] - image.get_clim()[0] == pytest.approx(15.0)


def test_plot_density_of_a_model(trained, tmp_path):
    model = trained[0]
    fig = plotting.plot_density(model, resolution=20, normalize=False)
    values = np.asarray(fig.axes[0].images[0].get_array())
    xs, ys, f = plotting.evaluate_on_grid(model, resolution=20)
    np.testing.assert_allclose(values, np.exp(f - f.max()), rtol=1e-5)
    _save(fig, tmp_path / "model_density.png")


def test_evaluate_on_grid_layout():
    xs, ys, values = plotting.evaluate_on_grid(lambda x: x[:, 0] + 10 * x[:, 1],
                                               bounds=((0, 1), (2, 3)), resolution=5)
    np.testing.assert_allclose(xs, np.linspace(0, 1, 5))
    np.testing.assert_allclose(values[1, 3], xs[3] + 10 * ys[1], rtol=1e-6)


def test_score_field_draws_the_model_score(trained, tmp_path):
    model = trained[0]
    fig = plotting.plot_score_field(model, resolution=7)
    assert len(fig.axes) == 1
    quiver = [c for c in fig.axes[0].collections if isinstance(c, Quiver)][0]
    xs = np.linspace(-4, 4, 7)
    gx, gy = np.meshgrid(xs, xs)
    expected = model.score(np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32))
    np.testing.assert_allclose(np.ravel(quiver.U), expected[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.ravel(quiver.V), expected[:, 1], rtol=1e-5, atol=1e-6)
    assert fig.axes[0].images  # the density drawn underneath
    _save(fig, tmp_path / "score.png")


def test_score_field_of_a_function_as_streamlines(tmp_path):
    score = functools.partial(toy.score, "moons", noise_std=0.2)
    fig = plotting.plot_score_field(score, resolution=15, style="stream",
                                    data=toy.sample("moons", 200, 0))
    assert len(fig.axes) == 1 and not fig.axes[0].images
    _save(fig, tmp_path / "stream.png")
    fig = plotting.plot_score_field(score, resolution=9, normalize_arrows=True,
                                    background=functools.partial(toy.log_density, "moons",
                                                                 noise_std=0.2))
    quiver = [c for c in fig.axes[0].collections if isinstance(c, Quiver)][0]
    np.testing.assert_allclose(np.hypot(quiver.U, quiver.V), 1.0, rtol=1e-6)
    assert len(fig.axes[0].images) == 1  # the given density drawn underneath


def test_plot_samples_2d_and_1d(tmp_path):
    data = toy.sample("rings", 300, 0)
    fig = plotting.plot_samples(toy.sample("rings", 200, 1), data, bounds=((-4, 4), (-4, 4)))
    assert len(fig.axes) == 1
    sizes = sorted(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert sizes == [200, 300]
    _save(fig, tmp_path / "samples.png")
    fig = plotting.plot_samples(toy.sample("gaussian_mixture_1d", 500, 1),
                                toy.sample("gaussian_mixture_1d", 500, 2), bins=20)
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 21  # 20 bars + 1 step outline
    _save(fig, tmp_path / "samples_1d.png")
    with pytest.raises(ValueError, match="1-D or 2-D"):
        plotting.plot_samples(np.zeros((5, 3)))


def test_plot_density_1d_integrates_to_one(tmp_path):
    fn = functools.partial(toy.log_density, "gaussian_mixture_1d", noise_std=0.1)
    fig = plotting.plot_density_1d(lambda x: fn(x) + 3.0, bounds=(-3, 5), reference=fn,
                                   data=toy.sample("gaussian_mixture_1d", 500, 0))
    assert len(fig.axes) == 1
    model_line, ref_line = fig.axes[0].get_lines()
    x, y = model_line.get_data()
    assert np.trapezoid(y, x) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(y, ref_line.get_data()[1], rtol=1e-6)  # the +3 normalized away
    _save(fig, tmp_path / "density_1d.png")


def test_training_curves_from_history_and_dict(trained, tmp_path):
    history = trained[1]
    fig = plotting.plot_training_curves(history)
    assert len(fig.axes) == 2  # loss axis + σ axis
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["loss", "val_loss"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), history.history["loss"])
    _save(fig, tmp_path / "curves.png")
    fig = plotting.plot_training_curves({"loss": [3.0, 2.0, 1.5]}, log_scale=True)
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match="no metric"):
        plotting.plot_training_curves({"noise_std": [0.1]})
    with pytest.raises(TypeError, match="History or a dict"):
        plotting.plot_training_curves([1.0, 2.0])


def test_training_curves_explain_a_changing_sigma_and_keep_the_legend_off_the_curves(tmp_path):
    """Issue 14 polish: the legend covered the curves, and nothing said that the losses of
    different epochs belong to different σ."""
    logs = {"loss": [3.0, 2.0, 1.8, 1.7], "val_loss": [3.1, 2.2, 1.9, 1.8],
            "noise_std": [0.5, 0.3, 0.1, 0.1]}
    fig = plotting.plot_training_curves(logs)
    title = fig.axes[0].get_title()
    assert "σ" in title and "not directly comparable" in title
    fig.canvas.draw()
    legend = fig.axes[0].get_legend().get_window_extent()
    assert legend.y1 <= fig.axes[0].get_window_extent().y0  # below the plotting area
    fixed = plotting.plot_training_curves({**logs, "noise_std": [0.1] * 4})
    assert fixed.axes[0].get_title() == ""  # σ constant: nothing to explain
    _save(fig, tmp_path / "curves.png")


def test_density_and_score_plots_have_axis_labels(trained):
    model = trained[0]
    for fig in (plotting.plot_density(model, resolution=20, colorbar=True),
                plotting.plot_score_field(model, resolution=8)):
        axis = fig.axes[0]
        assert axis.get_xlabel() == "x₁" and axis.get_ylabel() == "x₂"
    assert fig.axes[0].get_title()
    colorbar = plotting.plot_density(model, resolution=20, colorbar=True).axes[1]
    assert colorbar.get_ylabel() == "density"


def test_denoiser_arrows_end_at_the_denoised_points(trained, tmp_path):
    noisy = toy.sample("8gaussians", 50, 3) + 0.3 * np.random.default_rng(0).normal(
        size=(50, 2)).astype(np.float32)
    fig = plotting.plot_denoiser(lambda x: 0.5 * x, noisy, data=toy.sample("8gaussians", 100))
    quiver = [c for c in fig.axes[0].collections if isinstance(c, Quiver)][0]
    np.testing.assert_allclose(np.ravel(quiver.U), -0.5 * noisy[:, 0], rtol=1e-6)
    fig = plotting.plot_denoiser(trained[0], noisy)
    assert len(fig.axes) == 1
    _save(fig, tmp_path / "denoiser.png")


def test_density_snapshots_during_training(trained, tmp_path):
    snapshots = trained[2]
    assert [e for e, _ in snapshots.snapshots] == [0, 2, 3]
    assert all(g.shape == (12, 12) for _, g in snapshots.snapshots)
    assert not np.allclose(snapshots.snapshots[0][1], snapshots.snapshots[-1][1])
    fig = snapshots.plot()
    assert [a.get_title() for a in fig.axes] == ["epoch 0", "epoch 2", "epoch 3"]
    _save(fig, tmp_path / "snapshots.png")


def test_plot_densities_panels_share_a_scale():
    panels = {f"σ={s}": functools.partial(toy.log_density, "moons", noise_std=s)
              for s in (0.1, 0.2, 0.4, 0.8, 1.6)}
    fig = plotting.plot_densities(panels, resolution=25, ncols=3)
    assert len(fig.axes) == 5
    clims = {a.images[0].get_clim() for a in fig.axes}
    assert len(clims) == 1
    with pytest.raises(ValueError, match="must be 2-D"):
        plotting.plot_densities({"bad": np.zeros(4)})


@pytest.mark.parametrize("call, error, match", [
    (lambda: plotting.plot_density(_true, bounds=((1, 0), (0, 1))), ValueError, "lo < hi"),
    (lambda: plotting.plot_density(_true, bounds=(0, 1)), ValueError, "2 pair"),
    (lambda: plotting.plot_density(_true, resolution=1), ValueError, "at least 2"),
    (lambda: plotting.plot_density(_true, kind="pdf"), ValueError, "kind must be"),
    (lambda: plotting.plot_density(lambda x: x, resolution=4), ValueError, "returned shape"),
    (lambda: plotting.plot_density(42), TypeError, "callable"),
    (lambda: plotting.plot_score_field(_true, style="lines"), ValueError, "style must be"),
    (lambda: plotting.plot_denoiser(_true, np.zeros(3)), ValueError, "Expected 2D array"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
