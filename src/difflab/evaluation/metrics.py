"""The metrics: FID, KID, precision/recall and distance to the nearest image, on feature matrices.

The maths works on any feature matrices (rows = images), whatever network made them, each
function next to its paper:

- ``frechet_distance``: FID (Heusel et al. 2017, Eq. 6), computed stably in float64.
- ``kid``: KID, the unbiased MMD^2 with a cubic polynomial kernel (Bińkowski et al. 2018).
- ``precision_recall``: k-NN manifold precision and recall (Kynkäänniemi et al. 2019).
- ``nearest_distances``: feature distance from each image to its nearest training image, the
  memorisation check (a model that copies its training set scores closer than held-out images).

``format_table`` lays the numbers out as ``difflab evaluate`` prints them. Nothing here knows of
evaluators or datasets: those are ``evaluator.py`` and ``reference.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def _as_features(x: Any, what: str = "features") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"{what} must be a matrix with one row per image and at least 2 rows, got shape "
            f"{x.shape}"
        )
    return x


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64 (covariance with N - 1)."""
    x = _as_features(features)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, Eq. 6).

        d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

    Tr (S1 S2)^{1/2} is computed as Tr (S1^{1/2} S2 S1^{1/2})^{1/2}, the same eigenvalues, but of a
    symmetric PSD matrix, so two symmetric eigendecompositions in float64 suffice (eigenvalues
    clipped at 0): no complex parts to discard, unlike ``scipy.linalg.sqrtm`` on S1 S2.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"means {mu1.shape}, {mu2.shape} and covariances {s1.shape}, {s2.shape} do not fit "
            f"one {d}-dimensional feature space"
        )
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S1^{1/2}
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fid, 0.0))  # a squared distance; only rounding can make it negative


def fid_from_features(features1: Any, features2: Any) -> float:
    """FID between two feature matrices (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, KID's kernel (Bińkowski et al. 2018, Sec. 4), float64."""
    d = x.shape[1]
    return (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / d + 1.0) ** 3


def mmd2_unbiased(x: Any, y: Any) -> float:
    """The unbiased estimator of MMD^2 (Gretton et al. 2012, Eq. 3) with ``polynomial_kernel``.

    mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def kid(
    x: Any,
    y: Any,
    *,
    generator: np.random.Generator,
    num_subsets: int = 100,
    subset_size: int = 1000,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): ``mmd2_unbiased`` averaged over random subsets; (mean, std).

    Each subset draws ``min(subset_size, len(x), len(y))`` rows of each set without replacement.
    The estimator is unbiased, so unlike FID its expected value does not depend on N; the std is
    the spread over subsets (not the standard error of the mean).
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    m = min(subset_size, len(x), len(y))
    if num_subsets < 1 or m < 2:
        raise ValueError(f"KID needs >= 1 subset of >= 2 rows, got {num_subsets} of {m}")
    values = [
        mmd2_unbiased(
            x[generator.choice(len(x), m, replace=False)],
            y[generator.choice(len(y), m, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _knn_distances(
    query: np.ndarray, reference: np.ndarray, k: int, *, exclude_self: bool = False
) -> np.ndarray:
    """Distances (Nq, k), ascending, from each query row to its k nearest reference rows.

    Candidates are screened with a float32 matrix product (|q|^2 + |r|^2 - 2 q.r, fast but
    inexact for near-duplicates), then the best few are recomputed exactly in float64, so an exact
    copy is at distance 0. ``exclude_self``: query is reference, and row i is not its own neighbour.
    """
    q64, r64 = np.asarray(query, np.float64), np.asarray(reference, np.float64)
    n_ref = len(r64) - int(exclude_self)
    if not 1 <= k <= n_ref:
        raise ValueError(f"k = {k} nearest neighbours needs more than {k} reference rows")
    q32, r32 = torch.from_numpy(q64.astype(np.float32)), torch.from_numpy(r64.astype(np.float32))
    r_sq = (r32 * r32).sum(1)
    candidates = min(k + 8 + int(exclude_self), len(r64))
    out = np.empty((len(q64), k))
    chunk = max(1, (1 << 22) // len(r64))  # about 16 MB of float32 distances at a time
    for start in range(0, len(q64), chunk):
        q = q32[start : start + chunk]
        rows = torch.arange(start, start + len(q))
        d2 = (q * q).sum(1, keepdim=True) + r_sq[None] - 2.0 * (q @ r32.T)  # (c, Nr)
        if exclude_self:
            d2[torch.arange(len(q)), rows] = math.inf
        idx = torch.topk(d2, candidates, dim=1, largest=False).indices.numpy()  # (c, m)
        exact = ((q64[start : start + len(q), None, :] - r64[idx]) ** 2).sum(-1)  # (c, m)
        if exclude_self:
            exact[idx == rows.numpy()[:, None]] = math.inf
        out[start : start + len(q)] = np.sqrt(np.sort(exact, axis=1)[:, :k])
    return out


def nearest_distances(query: Any, reference: Any) -> np.ndarray:
    """Euclidean distance (Nq,) from each query row to its nearest reference row (exact in float64)."""
    q = np.asarray(query, np.float64)
    r = np.asarray(reference, np.float64)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1] or len(r) < 1:
        raise ValueError(f"query {q.shape} and reference {r.shape} must be (N, D) and (M, D)")
    return _knn_distances(q, r, 1)[:, 0]


def _inside_any_ball(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each point: is it within ``radii[i]`` of some ``centres[i]``? (closed balls, float64)"""
    p, c = torch.from_numpy(points), torch.from_numpy(centres)
    c_sq, r_sq = (c * c).sum(1), torch.from_numpy(radii) ** 2
    inside = np.empty(len(points), dtype=bool)
    chunk = max(1, (1 << 21) // len(centres))
    for start in range(0, len(points), chunk):
        q = p[start : start + chunk]
        d2 = (q * q).sum(1, keepdim=True) + c_sq[None] - 2.0 * (q @ c.T)  # (c, Nc)
        inside[start : start + len(q)] = (d2 <= r_sq[None]).any(1).numpy()
    return inside


def precision_recall(real: Any, fake: Any, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Eqs. 1-3).

    Each set's manifold is the union of balls around its points, each ball's radius the distance
    to the point's k-th nearest neighbour in its own set. Precision: the fraction of fake points
    inside the real manifold (fidelity); recall: the fraction of real points inside the fake
    manifold (coverage).
    """
    real, fake = _as_features(real, "real features"), _as_features(fake, "fake features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real {real.shape} and fake {fake.shape} features differ in width")
    if k < 1 or k >= min(len(real), len(fake)):
        raise ValueError(
            f"k = {k} needs more than k images in each set; got {len(real)} real and "
            f"{len(fake)} generated"
        )
    real_radii = _knn_distances(real, real, k, exclude_self=True)[:, -1]
    fake_radii = _knn_distances(fake, fake, k, exclude_self=True)[:, -1]
    precision = _inside_any_ball(fake, real, real_radii).mean()
    recall = _inside_any_ball(real, fake, fake_radii).mean()
    return float(precision), float(recall)


# --- report ----------------------------------------------------------------------------------


def format_table(metrics: dict[str, Any], data: str) -> str:
    """The metrics as a readable table (what ``difflab evaluate`` prints)."""
    m = metrics
    rows = [
        (f"FID vs {data} test", f"{m['fid']:.3f}", "lower is better; 0 = same feature statistics"),
        ("KID", f"{m['kid']:.5f} ± {m['kid_std']:.5f}", "unbiased, so ~0 (can be < 0) = same"),
        (
            "precision (k=3)",
            f"{m['precision']:.3f}",
            "samples on the real-image manifold (fidelity)",
        ),
        ("recall (k=3)", f"{m['recall']:.3f}", "real images on the sample manifold (coverage)"),
        (
            "distance to train, mean",
            f"{m['nn_train_mean']:.3f}",
            f"held-out test images: {m['nn_train_test_mean']:.3f} "
            f"(ratio {m['nn_train_ratio']:.2f}; well below 1 = copying)",
        ),
        (
            "distance to train, min",
            f"{m['nn_train_min']:.3f}",
            f"held-out test images: {m['nn_train_test_min']:.3f}; 0 = an exact copy",
        ),
        (
            "closer than 99% of test",
            f"{100 * m['nn_train_close_fraction']:.1f}%",
            "share of samples nearer to a training image than 99% of test images (~1% expected)",
        ),
    ]
    if m.get("class_entropy") is not None:
        rows.append(
            (
                "class entropy",
                f"{m['class_entropy']:.3f}",
                f"of the evaluator's predicted classes; {m['class_entropy_max']:.3f} = all equally "
                f"often (smallest class share {m['smallest_class_share']:.3f})",
            )
        )
    if m.get("class_accuracy") is not None:
        rows.append(
            (
                "class accuracy",
                f"{m['class_accuracy']:.3f}",
                "evaluator agrees with the requested class",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}" for a, b, c in rows)
