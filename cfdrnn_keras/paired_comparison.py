"""Two models on the same faces: the mean NME difference with a paired bootstrap interval.

A difference of a few hundredths of a point between two models is within the noise of 201 faces
unless the comparison is paired: every face is scored by both models, the per-face differences are
resampled (with replacement, the same faces for both models in every resample), and the interval is
the percentiles of the resampled means. This is how docs/TRAINING.md decides whether an ablation
helped (an interval that excludes zero), so it lives in the package rather than in one-off scripts.

Faces are matched by their file, not by their position in the reports, so two runs over the same
folders in another order still pair up, and so do a relative and an absolute name of one file (both
resolved from the current folder, as evaluate wrote them); a face that only one report has is left out and counted.
Errors are the reports' per-face inter-ocular NME in percent (a missed face counts as its 100 %, as
in the subset tables).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 5000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0


class ComparisonError(ValueError):
    """Two reports that cannot be compared (no face in common, a bad argument)."""


@dataclass(frozen=True)
class PairedDifference:
    """B against A on the faces both scored: means and B − A (percent), its interval, the share B won."""

    faces: int
    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    better_share: float  # faces where B's error is lower than A's, over all paired faces
    only_a: int  # faces only A scored (left out)
    only_b: int

    @property
    def excludes_zero(self) -> bool:
        return self.high < 0.0 or self.low > 0.0


def bootstrap_mean_interval(values, *, resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                            seed: int = DEFAULT_SEED) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and the percentile bootstrap interval of it."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ComparisonError("no values to resample")
    if not np.all(np.isfinite(values)):
        raise ComparisonError("the values are not all finite")
    if resamples < 1:
        raise ComparisonError(f"resamples must be at least 1, not {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ComparisonError(f"confidence must lie between 0 and 1, not {confidence}")
    rng = np.random.default_rng(seed)
    # Resampled in chunks so that 5000 resamples of thousands of faces stay a few MB.
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // values.size)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        picks = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[picks].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(values.mean()), float(low), float(high)


def per_face_errors(report: dict) -> dict[str, float]:
    """File → inter-ocular NME (percent) of a tools/evaluate.py report."""
    errors = {}
    for entry in report["per_image"]:
        file = os.path.realpath(entry["file"])
        if file in errors:
            raise ComparisonError(f"{report.get('model', 'a report')}: the face {entry['file']} is scored twice")
        errors[file] = float(entry["nme_io"])
    return errors


def paired_difference(report_a: dict, report_b: dict, **bootstrap) -> PairedDifference:
    """B − A over the faces both reports scored, with its bootstrap interval (see the module's text)."""
    a, b = per_face_errors(report_a), per_face_errors(report_b)
    common = sorted(set(a) & set(b))
    if not common:
        raise ComparisonError("the two reports have no face in common")
    errors_a = np.array([a[file] for file in common])
    errors_b = np.array([b[file] for file in common])
    difference, low, high = bootstrap_mean_interval(errors_b - errors_a, **bootstrap)
    return PairedDifference(
        faces=len(common), mean_a=float(errors_a.mean()), mean_b=float(errors_b.mean()),
        difference=difference, low=low, high=high, better_share=float(np.mean(errors_b < errors_a)),
        only_a=len(set(a) - set(b)), only_b=len(set(b) - set(a)))


def markdown_table(baseline_label: str, rows: dict[str, PairedDifference], confidence: float = DEFAULT_CONFIDENCE) -> str:
    """One row per report against the baseline: paired faces, both means, B − A and its interval."""
    percent = f"{100 * confidence:g} %"
    lines = [f"| against {baseline_label} | faces | baseline NME | NME | difference | {percent} interval | "
             "faces better | unpaired |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for label, row in rows.items():
        lines.append(f"| {label} | {row.faces} | {row.mean_a:.3f} | {row.mean_b:.3f} | {row.difference:+.3f} | "
                     f"{row.low:+.3f} … {row.high:+.3f} | {100 * row.better_share:.0f} % | {row.only_a + row.only_b} |")
    return "\n".join(lines)


__all__ = ["ComparisonError", "PairedDifference", "bootstrap_mean_interval", "markdown_table", "paired_difference",
           "per_face_errors"]
