"""Matplotlib figures for density models: density heat-maps, score fields, samples against
data, training curves, denoiser arrows and per-feature explanations of anomaly scores.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no global figure
state, no GUI backend: safe on headless machines and in worker threads); save it with
`fig.savefig(path)` or `dde._io.save_figure`. Pass `ax=` to draw into an existing Axes
instead (its figure is returned).

"Model or function" arguments accept either a dde model (its NumPy methods `log_density`,
`score`, `denoise` are used) or a plain callable mapping points x [n, d] to values:
log-densities [n] for the density plots, vectors [n, d] for the score and denoiser plots, e.g.
`lambda x: dde.datasets.toy.log_density("moons", x, noise_std=0.1)`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import keras
import numpy as np
from matplotlib.figure import Figure
from scipy.special import logsumexp

from dde._validation import check_data, check_positive

__all__ = [
    "DensitySnapshots",
    "evaluate_on_grid",
    "plot_denoiser",
    "plot_densities",
    "plot_density",
    "plot_explanation",
    "plot_density_1d",
    "plot_samples",
    "plot_score_field",
    "plot_training_curves",
]

DEFAULT_BOUNDS = ((-4.0, 4.0), (-4.0, 4.0))


# --------------------------------------------------------------------------------- helpers
def _check_bounds(bounds, dim: int = 2):
    """((lo, hi),) * dim as floats with lo < hi; a single (lo, hi) pair is accepted in 1-D."""
    arr = np.asarray(bounds, dtype=float)
    if dim == 1 and arr.shape == (2,):
        arr = arr[None]
    if arr.shape != (dim, 2):
        raise ValueError(f"bounds must be {dim} pair(s) (lo, hi), got {bounds!r}.")
    if not np.isfinite(arr).all() or np.any(arr[:, 0] >= arr[:, 1]):
        raise ValueError(f"bounds must be finite with lo < hi, got {bounds!r}.")
    return [tuple(b) for b in arr]


def _check_resolution(resolution) -> int:
    resolution = check_positive(resolution, "resolution", integer=True)
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}.")
    return int(resolution)


def _is_model(obj) -> bool:
    return hasattr(obj, "log_density") and hasattr(obj, "score")


def _call(fn, x, what: str, shape_tail: tuple):
    out = fn(x)
    if hasattr(out, "numpy"):
        out = out.numpy()
    out = np.asarray(out, dtype=np.float64)
    if out.shape == (len(x), 1) and shape_tail == ():
        out = out[:, 0]
    if out.shape != (len(x),) + shape_tail:
        raise ValueError(f"The {what} function returned shape {out.shape}; expected "
                         f"{(len(x),) + shape_tail}.")
    return out


def _log_density_fn(model_or_fn, noise_std=None):
    if _is_model(model_or_fn):
        kwargs = {} if noise_std is None else {"noise_std": noise_std}
        return lambda x: model_or_fn.log_density(x, **kwargs)
    if callable(model_or_fn):
        return model_or_fn
    raise TypeError("Expected a dde model (with log_density/score) or a callable x → "
                    f"log-density, got {type(model_or_fn).__name__}.")


def _vector_fn(model_or_fn, method: str, noise_std=None):
    if _is_model(model_or_fn):
        kwargs = {} if noise_std is None else {"noise_std": noise_std}
        return lambda x: getattr(model_or_fn, method)(x, **kwargs)
    if callable(model_or_fn):
        return model_or_fn
    raise TypeError(f"Expected a dde model (with {method}) or a callable x → vectors, got "
                    f"{type(model_or_fn).__name__}.")


def _figure_and_axes(ax, ncols: int = 1, figsize=None, dpi=None):
    if ax is not None:
        return ax.figure, [ax]
    if figsize is None:
        figsize = (4.0 * ncols, 3.8)
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _grid_axes(bounds, resolution):
    (x0, x1), (y0, y1) = bounds
    return np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)


def evaluate_on_grid(model_or_fn, bounds=DEFAULT_BOUNDS, resolution: int = 150,
                     noise_std=None):
    """Log-density on a regular 2-D grid: returns (xs [r], ys [r], values [r, r]).

    values[i, j] is the log-density at (xs[j], ys[i]) (image layout, rows along y).
    """
    bounds = _check_bounds(bounds, 2)
    resolution = _check_resolution(resolution)
    xs, ys = _grid_axes(bounds, resolution)
    gx, gy = np.meshgrid(xs, ys)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    values = _call(_log_density_fn(model_or_fn, noise_std), points, "log-density", ())
    return xs, ys, values.reshape(gx.shape)


def _normalized(values, cell_volume: float):
    """log-densities normalized to integrate to 1 over the grid (Riemann sum)."""
    finite = np.where(np.isfinite(values), values, -np.inf)
    return finite - (logsumexp(finite) + math.log(cell_volume))


def _draw_heatmap(ax, values, bounds, kind, dynamic_range, cmap, vmin=None, vmax=None):
    (x0, x1), (y0, y1) = bounds
    if kind == "density":
        image = np.exp(values)
        vmin = 0.0 if vmin is None else vmin
    else:
        image = values
        top = np.nanmax(values[np.isfinite(values)]) if np.isfinite(values).any() else 0.0
        vmax = top if vmax is None else vmax
        vmin = vmax - dynamic_range if vmin is None else vmin
    return ax.imshow(image, origin="lower", extent=(x0, x1, y0, y1), cmap=cmap,
                     vmin=vmin, vmax=vmax, aspect="equal", interpolation="nearest")


def _check_kind(kind):
    if kind not in ("density", "log_density"):
        raise ValueError(f"kind must be 'density' or 'log_density', got {kind!r}.")


def _scatter_data(ax, data, bounds, max_points=2000, **kwargs):
    data = check_data(data, name="data", n_features=2, owner="this plot", dtype=np.float64)
    if len(data) > max_points:
        data = data[np.random.default_rng(0).choice(len(data), max_points, replace=False)]
    style = {"s": 2, "c": "white", "alpha": 0.5, "linewidths": 0}
    style.update(kwargs)
    ax.scatter(data[:, 0], data[:, 1], **style)
    (x0, x1), (y0, y1) = bounds
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


# ------------------------------------------------------------------------------ densities
def plot_density(model_or_fn, bounds=DEFAULT_BOUNDS, resolution: int = 150, *,
                 kind: str = "density", normalize: bool = True, noise_std=None,
                 dynamic_range: float = 15.0, data=None, title: str | None = None,
                 cmap: str = "viridis", colorbar: bool = False, ax=None, figsize=None,
                 dpi=None) -> Figure:
    """Heat-map of a 2-D density over `bounds` ((x0, x1), (y0, y1)).

    kind: "density" shows exp f, "log_density" shows f (colour range: the top
    `dynamic_range` nats). normalize: divide by the grid integral over the box so that learned
    and true densities share a scale (otherwise f as returned). data: optional [n, 2] points
    drawn on top. One Axes (two with `colorbar=True`).
    """
    _check_kind(kind)
    bounds = _check_bounds(bounds, 2)
    xs, ys, values = evaluate_on_grid(model_or_fn, bounds, resolution, noise_std)
    if normalize:
        values = _normalized(values, (xs[1] - xs[0]) * (ys[1] - ys[0]))
    elif kind == "density":
        values = values - np.max(values)  # exp f up to a constant: peak 1
    fig, (axis,) = _figure_and_axes(ax, 1, figsize, dpi)
    image = _draw_heatmap(axis, values, bounds, kind, dynamic_range, cmap)
    if data is not None:
        _scatter_data(axis, data, bounds)
    axis.set_title(title if title is not None else ("density" if kind == "density"
                                                     else "log-density"))
    axis.set_xlabel("x₁")
    axis.set_ylabel("x₂")
    if colorbar:
        fig.colorbar(image, ax=axis, shrink=0.85,
                     label="density" if kind == "density" else "log-density")
    return fig


def plot_densities(panels: Mapping, bounds=DEFAULT_BOUNDS, resolution: int = 120, *,
                   kind: str = "density", normalize: bool = True, shared_scale: bool = True,
                   dynamic_range: float = 15.0, data=None, cmap: str = "viridis",
                   ncols: int | None = None, figsize=None, dpi=None) -> Figure:
    """Side-by-side heat-maps, one per entry of `panels` ({title: model, callable or a
    precomputed [r, r] log-density grid}), on a common colour scale (e.g. learned vs true).

    One Axes per panel (a trailing empty slot of the last row is removed).
    """
    _check_kind(kind)
    if not isinstance(panels, Mapping) or len(panels) == 0:
        raise ValueError("panels must be a non-empty mapping {title: model, function or grid}.")
    bounds = _check_bounds(bounds, 2)
    resolution = _check_resolution(resolution)
    grids = {}
    for name, item in panels.items():
        if isinstance(item, np.ndarray):
            if item.ndim != 2:
                raise ValueError(f"The grid for panel {name!r} must be 2-D, got shape "
                                 f"{item.shape}.")
            grids[name] = np.asarray(item, dtype=np.float64)
        else:
            grids[name] = evaluate_on_grid(item, bounds, resolution)[2]
    if normalize:
        for name, g in grids.items():
            (x0, x1), (y0, y1) = bounds
            cell = (x1 - x0) / (g.shape[1] - 1) * (y1 - y0) / (g.shape[0] - 1)
            grids[name] = _normalized(g, cell)
    elif kind == "density":
        grids = {k: g - np.max(g) for k, g in grids.items()}
    n = len(grids)
    ncols = min(n, 4) if ncols is None else int(check_positive(ncols, "ncols", integer=True))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=figsize or (3.2 * ncols, 3.2 * nrows), dpi=dpi, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    vmin = vmax = None
    if shared_scale:
        tops = [np.max(g[np.isfinite(g)]) for g in grids.values() if np.isfinite(g).any()]
        vmax = (max(np.exp(tops)) if kind == "density" else max(tops)) if tops else None
    for axis, (name, g) in zip(axes, grids.items()):
        _draw_heatmap(axis, g, bounds, kind, dynamic_range, cmap, vmin=vmin, vmax=vmax)
        if data is not None:
            _scatter_data(axis, data, bounds)
        axis.set_title(str(name))
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in axes[n:]:
        fig.delaxes(axis)
    return fig


def plot_density_1d(model_or_fn, bounds=(-4.0, 4.0), resolution: int = 400, *,
                    reference=None, data=None, normalize: bool = True, kind: str = "density",
                    noise_std=None, bins: int = 60, labels=("model", "reference"),
                    title: str | None = None, ax=None, figsize=(5.0, 3.4), dpi=None) -> Figure:
    """A 1-D density (exp f, or f with kind="log_density") as a curve over `bounds` (lo, hi),
    with an optional `reference` log-density (dashed; e.g. the true smoothed density) and a
    histogram of `data` [n, 1]. One Axes.
    """
    _check_kind(kind)
    (lo, hi), = _check_bounds(bounds, 1)
    resolution = _check_resolution(resolution)
    x = np.linspace(lo, hi, resolution)[:, None].astype(np.float32)
    fig, (axis,) = _figure_and_axes(ax, 1, figsize, dpi)
    if data is not None:
        data = check_data(data, name="data", n_features=1, owner="this plot",
                          allow_1d_as_column=True, dtype=np.float64)
        if kind == "density":
            axis.hist(data[:, 0], bins=bins, range=(lo, hi), density=True, color="0.8",
                      label="data")
    curves = [(model_or_fn, labels[0], "-")]
    if reference is not None:
        curves.append((reference, labels[1], "--"))
    for fn, label, style in curves:
        values = _call(_log_density_fn(fn, noise_std if fn is model_or_fn else None), x,
                       "log-density", ())
        if normalize:
            values = _normalized(values, (hi - lo) / (resolution - 1))
        elif kind == "density":
            values = values - np.max(values)
        axis.plot(x[:, 0], np.exp(values) if kind == "density" else values, style,
                  label=label)
    axis.set_xlim(lo, hi)
    axis.set_xlabel("x")
    axis.set_ylabel("density" if kind == "density" else "log-density")
    if title:
        axis.set_title(title)
    axis.legend(frameon=False)
    return fig


# ----------------------------------------------------------------------- vector fields
def plot_score_field(model_or_fn, bounds=DEFAULT_BOUNDS, resolution: int = 25, *,
                     style: str = "quiver", background=True, normalize_arrows: bool = False,
                     noise_std=None, data=None, title: str | None = None,
                     cmap: str = "viridis", ax=None, figsize=None, dpi=None) -> Figure:
    """The score field ∇ₓf on a 2-D grid: arrows (style="quiver") or streamlines
    (style="stream"). background: True draws a model's own density underneath (nothing for a
    plain score function), False nothing, or a model / log-density callable to draw instead.
    `normalize_arrows` draws unit arrows (direction only). One Axes.
    """
    if style not in ("quiver", "stream"):
        raise ValueError(f"style must be 'quiver' or 'stream', got {style!r}.")
    bounds = _check_bounds(bounds, 2)
    resolution = _check_resolution(resolution)
    fig, (axis,) = _figure_and_axes(ax, 1, figsize, dpi)
    backdrop = None
    if background is True and _is_model(model_or_fn):
        backdrop = model_or_fn
    elif background is not True and background is not False and background is not None:
        backdrop = background
    if backdrop is not None:
        xs, ys, values = evaluate_on_grid(backdrop, bounds, 120,
                                          noise_std if backdrop is model_or_fn else None)
        _draw_heatmap(axis, values - np.max(values), bounds, "density", 0.0, cmap)
    xs, ys = _grid_axes(bounds, resolution)
    gx, gy = np.meshgrid(xs, ys)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    field = _call(_vector_fn(model_or_fn, "score", noise_std), points, "score", (2,))
    u, v = field[:, 0].reshape(gx.shape), field[:, 1].reshape(gx.shape)
    speed = np.hypot(u, v)
    if normalize_arrows:
        scale = np.where(speed > 0, speed, 1.0)
        u, v = u / scale, v / scale
    colour = "white" if backdrop is not None else "k"
    if style == "quiver":
        axis.quiver(gx, gy, u, v, color=colour, angles="xy", pivot="mid", width=0.004)
    else:
        axis.streamplot(xs, ys, u, v, color=colour, density=1.2, linewidth=0.7, arrowsize=0.8)
    if data is not None:
        _scatter_data(axis, data, bounds, c="tab:red", alpha=0.3)
    (x0, x1), (y0, y1) = bounds
    axis.set_xlim(x0, x1)
    axis.set_ylim(y0, y1)
    axis.set_aspect("equal")
    axis.set_xlabel("x₁")
    axis.set_ylabel("x₂")
    axis.set_title(title if title is not None else "score ∇ₓf")
    return fig


def plot_denoiser(model_or_fn, noisy, *, data=None, bounds=DEFAULT_BOUNDS, noise_std=None,
                  max_arrows: int = 300, title: str | None = None, ax=None, figsize=None,
                  dpi=None) -> Figure:
    """Arrows from noisy points x̃ [n, 2] to their denoised images D(x̃) = x̃ + σ²∇ₓf(x̃)
    (a model's `denoise`, or a callable x̃ → D(x̃)), over optional clean `data`. One Axes."""
    bounds = _check_bounds(bounds, 2)
    noisy = check_data(noisy, name="noisy", n_features=2, owner="plot_denoiser")
    max_arrows = check_positive(max_arrows, "max_arrows", integer=True)
    if len(noisy) > max_arrows:
        noisy = noisy[np.random.default_rng(0).choice(len(noisy), max_arrows, replace=False)]
    denoised = _call(_vector_fn(model_or_fn, "denoise", noise_std), noisy, "denoiser", (2,))
    fig, (axis,) = _figure_and_axes(ax, 1, figsize, dpi)
    if data is not None:
        _scatter_data(axis, data, bounds, c="0.6", s=2, alpha=0.4)
    axis.quiver(noisy[:, 0], noisy[:, 1], denoised[:, 0] - noisy[:, 0],
                denoised[:, 1] - noisy[:, 1], angles="xy", scale_units="xy", scale=1.0,
                color="tab:blue", width=0.003)
    axis.scatter(noisy[:, 0], noisy[:, 1], s=5, c="tab:blue", label="noisy x̃")
    axis.scatter(denoised[:, 0], denoised[:, 1], s=5, c="tab:red", label="denoised D(x̃)")
    (x0, x1), (y0, y1) = bounds
    axis.set_xlim(x0, x1)
    axis.set_ylim(y0, y1)
    axis.set_aspect("equal")
    axis.legend(loc="upper right", fontsize="small", framealpha=0.8)
    axis.set_title(title if title is not None else "denoiser x̃ → x̃ + σ²∇ₓf(x̃)")
    return fig


# ------------------------------------------------------------------------------- samples
def plot_samples(samples, data=None, *, bounds=None, labels=("samples", "data"),
                 max_points: int = 5000, bins: int = 60, title: str | None = None, ax=None,
                 figsize=None, dpi=None) -> Figure:
    """Samples [n, d] against data [m, d]: a scatter plot in 2-D, histograms in 1-D. One
    Axes. `bounds` ((x0, x1), (y0, y1)) or (lo, hi) fixes the view."""
    samples = check_data(samples, name="samples", owner="plot_samples",
                         allow_1d_as_column=True, dtype=np.float64)
    d = samples.shape[1]
    if d not in (1, 2):
        raise ValueError(f"plot_samples draws 1-D or 2-D points; got {d} features.")
    if data is not None:
        data = check_data(data, name="data", n_features=d, owner="plot_samples",
                          allow_1d_as_column=True, dtype=np.float64)
    if bounds is not None:
        bounds = _check_bounds(bounds, d)
    max_points = check_positive(max_points, "max_points", integer=True)
    rng = np.random.default_rng(0)

    def thin(a):
        return a if len(a) <= max_points else a[rng.choice(len(a), max_points, replace=False)]

    fig, (axis,) = _figure_and_axes(ax, 1, figsize or ((5.0, 3.4) if d == 1 else None), dpi)
    if d == 1:
        lo_hi = bounds[0] if bounds is not None else None
        if data is not None:
            axis.hist(data[:, 0], bins=bins, range=lo_hi, density=True, color="0.75",
                      label=labels[1])
        axis.hist(samples[:, 0], bins=bins, range=lo_hi, density=True, histtype="step",
                  linewidth=1.5, color="tab:blue", label=labels[0])
        axis.set_xlabel("x")
        axis.set_ylabel("density")
    else:
        if data is not None:
            data = thin(data)
            axis.scatter(data[:, 0], data[:, 1], s=3, c="0.6", alpha=0.5, linewidths=0,
                         label=labels[1])
        samples = thin(samples)
        axis.scatter(samples[:, 0], samples[:, 1], s=3, c="tab:blue", alpha=0.6,
                     linewidths=0, label=labels[0])
        axis.set_aspect("equal")
        if bounds is not None:
            axis.set_xlim(*bounds[0])
            axis.set_ylim(*bounds[1])
    axis.legend(loc="upper right", fontsize="small", markerscale=3, framealpha=0.8)
    if title:
        axis.set_title(title)
    return fig


# ------------------------------------------------------------------------ explanations
def plot_explanation(contributions, feature_names=None, *, row: int | None = None,
                     top: int = 10, title: str | None = None, ax=None, figsize=None,
                     dpi=None) -> Figure:
    """Per-feature contributions to outlier scores as horizontal bars, largest |value| on
    top (red: the feature raises the outlier score, blue: it lowers it). One Axes.

    contributions: [n_features] for one row, or [n, n_features] (e.g.
    `DDEAnomalyDetector.explain(x)`) with `row` the row to draw, or row=None for the mean
    over the rows; feature_names: n_features labels (default x0, x1, …); `top`: the number
    of features drawn (the others are summed into one bar, "k others").
    """
    c = np.asarray(contributions, dtype=np.float64)
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or c.size == 0:
        raise ValueError("contributions must be [n_features] or [n, n_features] and "
                         f"non-empty; got shape {np.shape(contributions)}.")
    if not np.isfinite(c).all():
        raise ValueError("contributions hold NaN or infinite values.")
    n, d = c.shape
    if row is None:
        values, label = c.mean(0), ("mean contribution" if n > 1 else "contribution")
    else:
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) \
                or not -n <= row < n:
            raise ValueError(f"row must be an int in [-{n}, {n}), got {row!r}.")
        values, label = c[row], f"contribution (row {int(row) % n})"
    names = ([f"x{j}" for j in range(d)] if feature_names is None
             else [str(f) for f in feature_names])
    if len(names) != d:
        raise ValueError(f"{len(names)} feature names for {d} features.")
    top = check_positive(top, "top", integer=True)
    order = np.argsort(-np.abs(values), kind="stable")
    shown, rest = order[:top], order[top:]
    bars = list(values[shown]) + ([float(values[rest].sum())] if len(rest) else [])
    labels = [names[j] for j in shown] + ([f"{len(rest)} others"] if len(rest) else [])
    fig, (axis,) = _figure_and_axes(ax, 1, figsize or (5.0, 0.8 + 0.3 * len(bars)), dpi)
    ypos = np.arange(len(bars))[::-1]
    axis.barh(ypos, bars, color=["tab:red" if b > 0 else "tab:blue" for b in bars])
    axis.set_yticks(ypos, labels)
    axis.axvline(0.0, color="0.3", linewidth=0.8)
    axis.set_xlabel(f"{label} to the outlier score (nats)")
    axis.set_title(title or f"total {values.sum():.3g} nats")
    return fig


# ---------------------------------------------------------------------- training curves
_SECONDARY_KEYS = ("noise_std", "val_noise_std", "learning_rate")


def plot_training_curves(history, *, log_scale: bool = False, title: str | None = None,
                         ax=None, figsize=(5.0, 3.4), dpi=None) -> Figure:
    """Loss curves per epoch from a Keras `History` (or its `.history` dict): `loss`,
    `val_loss` and any other metric on the left axis; the noise level `noise_std` (σ in force,
    logged by DenoisingDensityEstimator) on a second, right-hand axis when present.
    One Axes, two with σ. The legend sits below the axes, off the curves. When σ changes
    during the run, the default title says that the losses of different epochs belong to
    different σ (the DSM loss's floor depends on σ), so a falling curve is not progress alone.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, Mapping):
        raise TypeError("history must be a keras.callbacks.History or a dict of lists, got "
                        f"{type(history).__name__}.")
    logs = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in logs.items()}
    main = {k: v for k, v in logs.items() if k not in _SECONDARY_KEYS and len(v)}
    if not main:
        raise ValueError("history holds no metric to plot (expected e.g. 'loss').")
    fig, (axis,) = _figure_and_axes(ax, 1, figsize, dpi)
    for key in sorted(main, key=lambda k: (k.startswith("val_"), k)):
        values = main[key]
        axis.plot(np.arange(1, len(values) + 1), values, "--" if key.startswith("val_")
                  else "-", marker="." if len(values) < 30 else None, label=key)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    if log_scale:
        axis.set_yscale("log")
    handles, names = axis.get_legend_handles_labels()
    sigma = logs.get("noise_std")
    if sigma is not None and len(sigma):
        right = axis.twinx()
        line, = right.plot(np.arange(1, len(sigma) + 1), sigma, ":", color="tab:red",
                           label="noise_std σ")
        right.set_ylabel("σ")
        right.set_ylim(0, max(float(np.max(sigma)) * 1.1, 1e-12))
        handles.append(line)
        names.append(line.get_label())
        if title is None and np.ptp(sigma) > 0:
            title = ("DSM loss while σ decreases: epochs at different σ\n"
                     "are not directly comparable (the loss's floor depends on σ)")
    axis.legend(handles, names, frameon=False, fontsize="small", loc="upper center",
                bbox_to_anchor=(0.5, -0.2), ncol=len(handles))
    if title:
        axis.set_title(title, fontsize="medium")
    return fig


# ------------------------------------------------------------------------------ callback
class DensitySnapshots(keras.callbacks.Callback):
    """Keras callback recording a 2-D model's log-density on a grid during training.

    A snapshot is taken before training (epoch 0, if `include_start`) and after every `every`
    epochs (and the last). `snapshots` holds (epoch, log-density grid [r, r]); `plot()` draws
    them side by side (`plot_densities`).
    """

    def __init__(self, bounds=DEFAULT_BOUNDS, resolution: int = 80, every: int = 1,
                 include_start: bool = True):
        super().__init__()
        self.bounds = _check_bounds(bounds, 2)
        self.resolution = _check_resolution(resolution)
        self.every = check_positive(every, "every", integer=True)
        self.include_start = bool(include_start)
        self.snapshots: list[tuple[int, np.ndarray]] = []

    def _snap(self, epoch: int):
        if self.snapshots and self.snapshots[-1][0] == epoch:
            return
        grid = evaluate_on_grid(self.model, self.bounds, self.resolution)[2]
        self.snapshots.append((epoch, grid))

    def on_train_begin(self, logs=None):
        self.snapshots = []
        self._epochs = self.params.get("epochs") if self.params else None
        if self.include_start:
            self._snap(0)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or (self._epochs and epoch + 1 == self._epochs):
            self._snap(epoch + 1)

    def plot(self, kind: str = "density", ncols: int | None = None, data=None,
             **kwargs) -> Figure:
        """One panel per snapshot, titled by epoch (see `plot_densities` for options)."""
        if not self.snapshots:
            raise RuntimeError("No snapshots yet: pass the callback to model.fit(...) first.")
        panels = {f"epoch {e}": g for e, g in self.snapshots}
        return plot_densities(panels, self.bounds, self.resolution, kind=kind, ncols=ncols,
                              data=data, **kwargs)
