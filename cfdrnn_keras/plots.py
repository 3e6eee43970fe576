"""Cumulative error distribution (CED) plots as PNG files, for one run or several side by side.

The curves are drawn on the same grid the AUC is computed on (metrics.ced_grid: 0 to 0.08 in 1e-4
steps), in percent of the inter-ocular distance, so what the eye sees is what the table says.
matplotlib runs on the Agg backend: no display is needed.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from . import metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path) -> Path:
    """Lay the figure out and write it as a PNG, making its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    return path


def safe_name(text: str) -> str:
    """A file-name-safe version of a subset or run name (`lfpw/testset` → `lfpw_testset`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unnamed"


def plot_ced(curves: dict, path, title: str = "Cumulative error distribution",
             threshold: float = metrics.AUC_THRESHOLD) -> Path:
    """One CED curve per entry of `curves` (label → per-image errors as fractions) into a PNG.

    Each label is suffixed with its AUC and failure rate at the threshold, so a figure stands alone.
    """
    plt = _pyplot()
    grid = metrics.ced_grid(threshold)
    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    try:
        for label, errors in curves.items():
            errors = np.asarray(errors, dtype=np.float64)
            auc = 100 * metrics.auc(errors, threshold)
            failures = 100 * metrics.failure_rate(errors, threshold)
            axes.plot(100 * grid, metrics.ced(errors, grid),
                      label=f"{label} (n={errors.size}, AUC {auc:.2f}, FR {failures:.2f}%)")
        axes.set_xlim(0, 100 * threshold)
        axes.set_ylim(0, 1)
        axes.set_xlabel("NME, inter-ocular (%)")
        axes.set_ylabel("fraction of images")
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize="small")  # good models rise at the left, poor ones hug the bottom
        return _save(figure, path)
    finally:
        plt.close(figure)


def plot_run(members: dict, directory, model: str = "") -> list[Path]:
    """A run's CED curves: every subset in one figure (`ced.png`)."""
    title = f"CED, {model}" if model else "Cumulative error distribution"
    return [plot_ced(members, Path(directory) / "ced.png", title)]


def plot_compare(runs: dict, directory) -> list[Path]:
    """Several runs (label → {subset → errors}) compared: one figure per subset that every run has
    (`ced_compare_<subset>.png`), one curve per run."""
    if not runs:
        return []
    shared = [name for name in next(iter(runs.values())) if all(name in members for members in runs.values())]
    paths = []
    for subset in shared:
        curves = {label: members[subset] for label, members in runs.items()}
        paths.append(plot_ced(curves, Path(directory) / f"ced_compare_{safe_name(subset)}.png", f"CED, {subset}"))
    return paths


def plot_reliability(uncertainty_px, error_px, path, title: str = "Uncertainty reliability", bins: int = 10) -> Path:
    """Reliability diagram of a per-point uncertainty (issue 17): points ranked by predicted
    uncertainty, cut into `bins` equal groups; each group's mean actual error against its mean
    prediction (photo pixels, log axes), with the diagonal and the ±25 % band of the goal; the
    five fifths' ratios in the legend."""
    from .uncertainty_metrics import fifth_ratios

    plt = _pyplot()
    u = np.asarray(uncertainty_px, np.float64).ravel()
    e = np.asarray(error_px, np.float64).ravel()
    groups = fifth_ratios(u, e, bins)
    fifths = fifth_ratios(u, e, 5)
    predicted = np.array([g["predicted"] for g in groups])
    actual = np.array([g["actual"] for g in groups])
    figure, axes = plt.subplots(figsize=(5.6, 5.2), dpi=120)
    try:
        low, high = min(predicted.min(), actual.min()) * 0.8, max(predicted.max(), actual.max()) * 1.25
        line = np.geomspace(low, high, 50)
        axes.fill_between(line, line * 0.75, line * 1.25, color="0.85", label="±25 % (the goal)")
        axes.plot(line, line, color="0.4", lw=1, label="calibrated")
        axes.plot(predicted, actual, "o-", color="C0",
                  label=f"{bins} groups of {u.size // bins} points\nfifths: " + " ".join(f"{f['ratio']:.2f}" for f in fifths))
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlim(low, high)
        axes.set_ylim(low, high)
        axes.set_xlabel("predicted uncertainty (mean of group, px)")
        axes.set_ylabel("actual error (mean of group, px)")
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(loc="upper left", fontsize="small")
        return _save(figure, path)
    finally:
        plt.close(figure)
