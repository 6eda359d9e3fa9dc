"""Scaling-law fits over a study's sizes (and token budgets), with bootstrap intervals.

    L(N)    = E + A / N^alpha                      at least 3 sizes
    L(N, D) = E + A / N^alpha + B / D^beta         also at least 2 token budgets

The fit follows Hoffmann et al. (2022, "approach 3") as re-examined by Besiroglu et al. (2024,
"Chinchilla scaling: a replication attempt"): with E = exp(e), A = exp(a), B = exp(b) the
prediction is a log-sum-exp, and the Huber loss (delta = 1e-3) of log L - log prediction is
minimised by L-BFGS. The objective is not convex, so it is first evaluated on Hoffmann's grid of
initialisations and L-BFGS starts from the best few grid points; the best optimum wins. Huber on
log-loss keeps a diverging or badly-tuned run from dragging the exponent. Besiroglu et al. showed
that the intervals Hoffmann reported were far too narrow; here they come from a bootstrap over
runs (each resample refit the same way), so they widen honestly when runs disagree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import minimize

from lmablate.results.shape import size_levels, spans_sizes

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Fit", "fit_law", "bootstrap_fit", "predict", "fit_study", "HUBER_DELTA"]

HUBER_DELTA = 1e-3
# Hoffmann et al.'s initialisation grid (exponents, log-coefficients, log-irreducible loss)
GRID_EXP = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_COEF = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
EXP_BOUNDS = (0.0, 4.0)  # alpha, beta
LOG_BOUNDS = (-30.0, 60.0)  # e, a, b: keeps E = exp(e) > 0 (an E of 0 is a valid answer)


@dataclass(frozen=True)
class Fit:
    form: str  # "L(N)" | "L(N,D)"
    params: dict[str, float]  # E, A, alpha (and B, beta)
    objective: float  # summed Huber loss / delta at the optimum
    n_points: int

    def predict(self, n: Any, d: Any = None) -> np.ndarray:
        return predict(self.params, n, d)


def predict(params: Mapping[str, float], n: Any, d: Any = None) -> np.ndarray:
    """The law's loss at parameter count(s) ``n`` (and tokens ``d`` for the two-term form)."""
    out = params["E"] + params["A"] / np.asarray(n, dtype=float) ** params["alpha"]
    if "B" in params:
        out = out + params["B"] / np.asarray(d, dtype=float) ** params["beta"]
    return np.asarray(out)


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative, elementwise."""
    a = np.abs(r)
    quad = a <= delta
    loss = np.where(quad, 0.5 * r**2, delta * (a - 0.5 * delta))
    grad = np.where(quad, r, delta * np.sign(r))
    return loss, grad


def _log_pred(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """log prediction (B, n) and the softmax weight of each term (k, B, n) for B parameter
    vectors theta (B, 3 or 5): log(exp(e) + exp(a - alpha log N) [+ exp(b - beta log D)])."""
    terms = [np.broadcast_to(theta[:, 0:1], (len(theta), len(logn))),
             theta[:, 1:2] - theta[:, 2:3] * logn[None, :]]
    if logd is not None:
        terms.append(theta[:, 3:4] - theta[:, 4:5] * logd[None, :])
    t = np.stack(terms)
    top = t.max(0)
    w = np.exp(t - top)
    s = w.sum(0)
    return top + np.log(s), w / s


def _objective(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray | None, logl: np.ndarray,
               weights: np.ndarray, delta: float) -> np.ndarray:
    """Weighted Huber loss of log-residuals / delta, for each of B parameter vectors: (B,)."""
    pred, _ = _log_pred(theta, logn, logd)
    return (_huber(pred - logl[None, :], delta)[0] * weights).sum(1) / delta


def _fit_batch(theta0: np.ndarray, logn: np.ndarray, logd: np.ndarray | None, logl: np.ndarray,
               weights: np.ndarray, delta: float, iters: int = 500
               ) -> tuple[np.ndarray, np.ndarray]:
    """Minimise B independent problems at once from theta0 (B, k): optima and objectives.

    Levenberg-Marquardt on the iteratively reweighted form of the Huber loss (weights
    min(1, delta/|r|) make its gradient the Huber gradient); a step is kept only if it lowers the
    true Huber objective, so every problem descends monotonically. Vectorised over problems, a
    200-resample bootstrap costs about as much as one scipy L-BFGS run.
    """
    theta = theta0.astype(float).copy()
    b, k = theta.shape
    lam = np.full(b, 1e-2)
    f = _objective(theta, logn, logd, logl, weights, delta)
    eye = np.eye(k)
    bounds = np.asarray(_bounds(k))
    lo, hi = bounds[:, 0], bounds[:, 1]
    stall = np.zeros(b, dtype=int)
    active = np.arange(b)  # problems still moving; converged ones are left alone
    for _ in range(iters):
        th, wts = theta[active], weights[active]
        pred, w = _log_pred(th, logn, logd)
        r = pred - logl[None, :]
        irls = wts * np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
        cols = [w[0], w[1], -w[1] * logn]
        if k == 5:
            cols += [w[2], -w[2] * logd]
        jac = np.stack(cols, axis=2)  # (B, n, k)
        jtw = np.transpose(jac, (0, 2, 1)) * irls[:, None, :]
        hess = jtw @ jac
        grad = np.einsum("bkn,bn->bk", jtw, r)
        damp = lam[active, None, None] * (hess * eye + 1e-9 * eye)
        step = np.linalg.solve(hess + damp, -grad[:, :, None])[:, :, 0]
        new = np.clip(th + step, lo, hi)
        fn = _objective(new, logn, logd, logl, wts, delta)
        fa = f[active]
        better = fn < fa
        gain = np.where(better, (fa - fn) / np.maximum(fa, 1e-300), 0.0)
        theta[active[better]], f[active[better]] = new[better], fn[better]
        lam[active] = np.clip(np.where(better, lam[active] / 3, lam[active] * 4), 1e-12, 1e12)
        done = (better & (gain < 1e-10)) | (lam[active] >= 1e10)  # converged, or no step helps
        stall[active] = np.where(done, stall[active] + 1, np.where(better, 0, stall[active]))
        active = active[stall[active] < 3]
        if not len(active):
            break
    return theta, f


def _bounds(k: int) -> list[tuple[float, float]]:
    return [LOG_BOUNDS, LOG_BOUNDS, EXP_BOUNDS] + ([LOG_BOUNDS, EXP_BOUNDS] if k == 5 else [])


def _grid(two_terms: bool) -> np.ndarray:
    axes = [GRID_E, GRID_COEF, GRID_EXP] + ([GRID_COEF, GRID_EXP] if two_terms else [])
    return np.asarray(list(itertools.product(*axes)), dtype=float)


def _params(theta: np.ndarray) -> dict[str, float]:
    out = {"E": math.exp(theta[0]), "A": math.exp(theta[1]), "alpha": float(theta[2])}
    if len(theta) == 5:
        out.update({"B": math.exp(theta[3]), "beta": float(theta[4])})
    return out


def _logs(n: Any, loss: Any, d: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    return (np.log(np.asarray(n, dtype=float)), np.log(np.asarray(loss, dtype=float)),
            None if d is None else np.log(np.asarray(d, dtype=float)))


def fit_law(n: Sequence[float], loss: Sequence[float], d: Sequence[float] | None = None, *,
            delta: float = HUBER_DELTA, starts: int = 16) -> Fit:
    """Fit L(N) (``d`` None) or L(N, D) by Huber loss on log L.

    The objective is evaluated on Hoffmann et al.'s whole initialisation grid; L-BFGS then starts
    from the ``starts`` best grid points and the lowest optimum wins.
    """
    logn, logl, logd = _logs(n, loss, d)
    grid = _grid(logd is not None)
    objs = _objective(grid, logn, logd, logl, np.ones((1, len(logl))), delta)
    theta0 = grid[np.argsort(objs)[:starts]]
    theta, f = _fit_batch(theta0, logn, logd, logl, np.ones((len(theta0), len(logl))), delta)
    best, fbest = theta[int(np.argmin(f))], float(f.min())
    polished = _lbfgs(best, logn, logd, logl, delta)  # Hoffmann's optimiser, from the best start
    fp = float(_objective(polished[None, :], logn, logd, logl, np.ones((1, len(logl))), delta)[0])
    if fp < fbest:
        best, fbest = polished, fp
    return Fit("L(N)" if logd is None else "L(N,D)", _params(best), fbest, len(logl))


def _lbfgs(theta0: np.ndarray, logn: np.ndarray, logd: np.ndarray | None, logl: np.ndarray,
           delta: float) -> np.ndarray:
    """scipy L-BFGS-B on one problem with the analytic gradient."""
    k = len(theta0)
    ones = np.ones((1, len(logl)))

    def fun(th: np.ndarray) -> tuple[float, np.ndarray]:
        pred, w = _log_pred(th[None, :], logn, logd)
        _, g = _huber(pred[0] - logl, delta)
        grad = [g @ w[0, 0], g @ w[1, 0], -(g * w[1, 0]) @ logn]
        if k == 5:
            grad += [g @ w[2, 0], -(g * w[2, 0]) @ logd]
        return float(_objective(th[None, :], logn, logd, logl, ones, delta)[0]), \
            np.asarray(grad) / delta

    return minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=_bounds(k),
                    options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-10}).x


def _theta(params: Mapping[str, float]) -> np.ndarray:
    th = [math.log(params["E"]), math.log(params["A"]), params["alpha"]]
    if "B" in params:
        th += [math.log(params["B"]), params["beta"]]
    return np.asarray(th)


def bootstrap_fit(n: Sequence[float], loss: Sequence[float], d: Sequence[float] | None = None,
                  *, n_boot: int = 200, seed: int = 0, confidence: float = 0.95,
                  delta: float = HUBER_DELTA, grid_n: Sequence[float] | None = None
                  ) -> dict[str, Any]:
    """Fit on all points, then refit ``n_boot`` resamples of the points (with replacement).

    Each resample starts from the full-data optimum and from the best grid point of its own
    data, keeping the lower optimum. Returns the point estimate, percentile intervals per
    parameter and, for L(N), a pointwise prediction band over ``grid_n``. Resamples with fewer
    than three distinct sizes (or two budgets) cannot identify the law and are skipped; how many
    were used is reported.
    """
    n_arr, l_arr = np.asarray(n, float), np.asarray(loss, float)
    d_arr = None if d is None else np.asarray(d, float)
    full = fit_law(n_arr, l_arr, d_arr, delta=delta)
    logn, logl, logd = _logs(n_arr, l_arr, d_arr)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(n_arr), np.full(len(n_arr), 1 / len(n_arr)), size=n_boot)
    usable = np.asarray([len(set(n_arr[c > 0])) >= 3 and (
        d_arr is None or len(set(d_arr[c > 0])) >= 2) for c in counts], dtype=bool)
    counts = counts[usable].astype(float)
    draws = np.empty((0, len(_theta(full.params))))
    if len(counts):
        grid = _grid(d_arr is not None)
        pred, _ = _log_pred(grid, logn, logd)
        per_point = _huber(pred - logl[None, :], delta)[0]  # (G, n)
        own = grid[np.argmin(per_point @ counts.T, axis=0)]  # best grid start per resample
        starts = np.concatenate([np.tile(_theta(full.params), (len(counts), 1)), own])
        theta, f = _fit_batch(starts, logn, logd, logl, np.concatenate([counts, counts]), delta)
        b = len(counts)
        draws = np.where((f[:b] <= f[b:])[:, None], theta[:b], theta[b:])
    params = [_params(t) for t in draws]
    q = (0.5 - confidence / 2, 0.5 + confidence / 2)
    ci = {k: ([float(np.quantile([p[k] for p in params], q[0])),
               float(np.quantile([p[k] for p in params], q[1]))] if params else [None, None])
          for k in full.params}
    out: dict[str, Any] = {"form": full.form, "params": full.params, "ci": ci,
                           "objective": full.objective, "n_points": full.n_points,
                           "n_boot": len(params), "confidence": confidence}
    if d_arr is None:
        grid_n = np.geomspace(n_arr.min(), n_arr.max(), 60) if grid_n is None else \
            np.asarray(grid_n, float)
        band = np.asarray([predict(p, grid_n) for p in params])
        out["curve"] = {"n": grid_n.tolist(), "fit": predict(full.params, grid_n).tolist(),
                        "lo": np.quantile(band, q[0], axis=0).tolist() if params else None,
                        "hi": np.quantile(band, q[1], axis=0).tolist() if params else None}
    return out


def _param_column(runs: pd.DataFrame) -> str | None:
    for col in ("params_non_embedding", "params_total"):
        if col in runs and runs[col].notna().any() and (runs[col] > 0).any():
            return col
    return None


def fit_study(runs: pd.DataFrame, metric: str = "val_loss", *, n_boot: int = 200
              ) -> dict[str, Any] | None:
    """Scaling fits of a study's completed runs, or None unless they span at least three sizes
    over a factor of two (:func:`lmablate.results.shape.spans_sizes`).

    A law describes the best loss reachable at a size, so at each size (and budget) only the
    group with the lowest mean loss enters the fit: the other learning rates or settings of a
    sweep would otherwise pull the curve towards badly tuned runs. Each such configuration is one
    point (its mean over seeds), and the bootstrap resamples configurations, as Besiroglu et al.
    resample data points; seeds enter through the means. Mixtures of experts follow a
    different law; when a study has dense and MoE runs, the dense ones are fitted. N is the
    non-embedding parameter count (Kaplan et al.: embeddings bend the law for small models) when
    known, else the total; D is the tokens each run trained on. The two-term form is fitted too
    when there are at least two budgets and six distinct (N, D) points.
    """
    col = _param_column(runs)
    if col is None or metric not in runs:
        return None
    ok = runs[runs[col].notna() & runs[metric].notna() & (runs[metric] > 0) & (runs[col] > 0)]
    note = []
    if "model.num_experts" in ok:
        moe = ok["model.num_experts"].fillna(0) > 0
        if moe.any() and (~moe).any():
            ok = ok[~moe]
            note.append("dense runs only")
    if not spans_sizes(ok[col].tolist()):
        return None
    levels = size_levels(ok[col].tolist())
    level_of = {p: max(i for i, lv in enumerate(levels) if p >= lv) for p in set(ok[col])}
    has_d = "tokens" in ok and ok.tokens.notna().all()
    means = ok.groupby("group", observed=True).agg(
        loss=(metric, "mean"), n=(col, "first"), d=("tokens", "first") if has_d else (col, "size"))
    means["level"] = means.n.map(level_of)
    keys = ["level", "d"] if has_d else ["level"]
    best = means.sort_values("loss").groupby(keys).head(1).index
    used = ok[ok.group.isin(best)]
    points = means.loc[best]  # one point per configuration: mean loss over its seeds
    n, loss = points.n.to_numpy(float), points.loss.to_numpy(float)
    one = bootstrap_fit(n, loss, n_boot=n_boot)
    out: dict[str, Any] = {"n_column": col, "metric": metric, "n_runs": int(len(used)),
                           "sizes": len(levels), "n_min": float(used[col].min()),
                           "n_max": float(used[col].max()), "groups_used": sorted(best),
                           "n_groups": int(len(means)), "notes": note, "law_n": one}
    budgets = sorted(set(used.tokens)) if has_d else []
    if len(budgets) >= 2 and len(points) >= 6:
        out["law_nd"] = bootstrap_fit(n, loss, points.d.to_numpy(float), n_boot=n_boot)
        out["budgets"] = budgets
    out["text"] = _paragraph(out)
    return out


def _ci(fit: Mapping[str, Any], k: str, fmt: str = ".3g") -> str:
    lo, hi = fit["ci"][k]
    v = fit["params"][k]
    return f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None else f"{v:{fmt}}"


def _paragraph(s: Mapping[str, Any]) -> str:
    from lmablate.units import fmt_count

    one = s["law_n"]
    what = "non-embedding" if s["n_column"] == "params_non_embedding" else "total"
    used = (f"at each size the best of its groups by mean loss, one point each: "
            f"{len(s['groups_used'])} of {s['n_groups']} groups, {s['n_runs']} runs"
            + "".join(f"; {n}" for n in s["notes"]))
    txt = (f"Scaling fit over {s['sizes']} sizes (N = {fmt_count(s['n_min'])} to "
           f"{fmt_count(s['n_max'])} {what} parameters; {used}): L(N) = E + A/N^alpha "
           f"with alpha = {_ci(one, 'alpha', '.3f')}, E = {_ci(one, 'E', '.3f')}, "
           f"A = {_ci(one, 'A')} (95% bootstrap intervals over {one['n_boot']} resamples of the "
           "fitted configurations; "
           f"Huber loss on log L, delta = {HUBER_DELTA:g}, minimised from the best of "
           "Hoffmann et al.'s grid of starts).")
    nd = s.get("law_nd")
    if nd:
        txt += (f" With {len(s['budgets'])} token budgets, L(N, D) = E + A/N^alpha + B/D^beta "
                f"gives alpha = {_ci(nd, 'alpha', '.3f')}, beta = {_ci(nd, 'beta', '.3f')}, "
                f"E = {_ci(nd, 'E', '.3f')}.")
    lo, hi = one["ci"]["alpha"]
    if lo is not None and hi - lo > max(0.5, abs(one["params"]["alpha"])):
        txt += (" The exponent is poorly determined by these runs: widen the size range or add "
                "seeds.")
    txt += " Outside the fitted range the law is an extrapolation these runs do not test."
    return txt
