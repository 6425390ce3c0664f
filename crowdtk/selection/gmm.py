"""Expectation-maximisation for diagonal Gaussian mixtures, batched over images (MDC's clustering).

``gmm_numpy`` (the default engine) runs scikit-learn's diagonal-covariance EM (its update
formulas, tolerance and stopping rule) on a batch of B images with the same number of
strips at once: one array operation per EM step instead of one ``GaussianMixture`` per image,
which is what makes 100,000 images take seconds. ``gmm_sklearn`` is the reference it is
tested against: one ``sklearn.mixture.GaussianMixture`` per image. Both start from the same
k-means++ seeds (:func:`kmeans_plusplus`, drawn from given uniforms) so that they fit the same
mixture.
"""

from __future__ import annotations

import numpy as np


def kmeans_plusplus(z: np.ndarray, k: int, uniforms: np.ndarray) -> np.ndarray:
    """Greedy k-means++ seeds (scikit-learn's variant: 2 + ln k local trials), batched: (B, k) strip indices."""
    b, n, _ = z.shape
    trials = 2 + int(np.log(k))
    rows = np.arange(b)
    first = np.minimum((uniforms[:, 0] * n).astype(np.int64), n - 1)
    centres = [first]
    closest = ((z - z[rows, first][:, None, :]) ** 2).sum(-1)
    potential = closest.sum(1)
    for c in range(1, k):
        draws = uniforms[:, 1 + (c - 1) * trials : 1 + c * trials] * potential[:, None]
        cumulative = np.cumsum(closest, axis=1)
        candidates = np.minimum((cumulative[:, None, :] < draws[:, :, None]).sum(-1), n - 1)  # searchsorted, left
        dist = ((z[:, None, :, :] - z[rows[:, None], candidates][:, :, None, :]) ** 2).sum(-1)
        trial_closest = np.minimum(closest[:, None, :], dist)
        trial_potential = trial_closest.sum(-1)
        best = trial_potential.argmin(1)
        centres.append(candidates[rows, best])
        closest = trial_closest[rows, best]
        potential = trial_potential[rows, best]
    return np.stack(centres, axis=1)


def _init_params(z: np.ndarray, seeds: np.ndarray, reg_covar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal weights, means at the seeds, covariances from the one-hot responsibilities (as scikit-learn)."""
    b, n, _ = z.shape
    k = seeds.shape[1]
    resp = np.zeros((b, n, k))
    resp[np.arange(b)[:, None], seeds, np.arange(k)[None, :]] = 1.0
    _, means, cov = _gaussian_params(z, resp, reg_covar)
    weights = np.full((b, k), 1.0 / k)
    return weights, means, cov


def _gaussian_params(z: np.ndarray, resp: np.ndarray, reg_covar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """M step (scikit-learn's): component sizes, means and diagonal covariances from the responsibilities."""
    # The eps keeps an empty component from dividing by zero; the floor on the covariance keeps
    # a component that collapsed onto one strip from an infinite precision.
    nk = resp.sum(axis=1) + 10 * np.finfo(resp.dtype).eps
    rt = resp.transpose(0, 2, 1)
    means = np.matmul(rt, z) / nk[:, :, None]
    cov = np.matmul(rt, z * z) / nk[:, :, None] - means**2 + reg_covar
    return nk, means, np.maximum(cov, reg_covar * 1e-3)


def _log_resp(
    z: np.ndarray, weights: np.ndarray, means: np.ndarray, prec_chol: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """E step: the mean log-likelihood per image (B,) and the log responsibilities (B, n, k)."""
    d = z.shape[2]
    precisions = prec_chol**2
    log_prob = (
        (means**2 * precisions).sum(-1)[:, None, :]
        - 2 * np.matmul(z, (means * precisions).transpose(0, 2, 1))
        + np.matmul(z**2, precisions.transpose(0, 2, 1))
    )
    weighted = (
        -0.5 * (d * np.log(2 * np.pi) + log_prob) + np.log(prec_chol).sum(-1)[:, None, :] + np.log(weights)[:, None, :]
    )
    top = weighted.max(axis=2, keepdims=True)  # log-sum-exp shifted by the maximum, so exp never overflows
    norm = (np.log(np.exp(weighted - top).sum(axis=2, keepdims=True)) + top)[:, :, 0]
    return norm.mean(axis=1), weighted - norm[:, :, None]


def gmm_numpy(
    z: np.ndarray, seeds: np.ndarray, reg_covar: float, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for diagonal Gaussian mixtures on B images at once; scikit-learn's updates and stopping rule.

    Returns (labels (B, n), means (B, k, d), mean log-likelihood of the fit (B,)).
    """
    weights, means, cov = _init_params(z, seeds, reg_covar)
    prec_chol = np.sqrt(1.0 / cov)  # scikit-learn: precisions_init -> sqrt
    lower = np.full(len(z), -np.inf)
    active = np.arange(len(z))
    for _ in range(max_iter):
        if active.size == 0:
            break
        za = z[active]
        bound, log_resp = _log_resp(za, weights[active], means[active], prec_chol[active])
        nk, m, c = _gaussian_params(za, np.exp(log_resp), reg_covar)
        weights[active] = nk / nk.sum(axis=1, keepdims=True)
        means[active] = m
        prec_chol[active] = 1.0 / np.sqrt(c)
        change = bound - lower[active]
        lower[active] = bound
        active = active[~(np.abs(change) < tol)]
    score, log_resp = _log_resp(z, weights, means, prec_chol)
    return log_resp.argmax(axis=2), means, score


def gmm_sklearn(
    z: np.ndarray, seeds: np.ndarray, reg_covar: float, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: one ``sklearn.mixture.GaussianMixture`` per image, from the same initialisation."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    weights, means, cov = _init_params(z, seeds, reg_covar)
    labels = np.zeros(z.shape[:2], dtype=np.int64)
    out = np.zeros_like(means)
    score = np.zeros(len(z))
    for i in range(len(z)):
        gm = GaussianMixture(
            n_components=seeds.shape[1],
            covariance_type="diag",
            reg_covar=reg_covar,
            max_iter=max_iter,
            tol=tol,
            init_params="random_from_data",
            weights_init=weights[i],
            means_init=means[i],
            precisions_init=1.0 / cov[i],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels[i] = gm.fit_predict(z[i])
        out[i] = gm.means_
        score[i] = _log_resp(z[i][None], gm.weights_[None], gm.means_[None], gm.precisions_cholesky_[None])[0][0]
    return labels, out, score
