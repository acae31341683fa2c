"""Learned Ω (DESIGN §4): feature weights fitted so that objects of the query's class rank first.

P_i = Σ_j ω_j g_ij (eq. 4) is linear in ω, with g_ij = exp(−((z_ij − z_qj)/τ)²) (eq. 2 on
z-scored features). For a query q and a set of candidates c (its nearest neighbours in z
plus random objects) the loss is the softmax ranking loss of neighbourhood components
analysis,

    L_q = −log Σ_{c relevant} softmax_c(β P_c),

averaged over queries, plus λ·KL(ω ‖ prior), a pull toward the Ω the fit starts from. ω lives
on the simplex through ω = softmax(θ); θ and log β (the loss's temperature, learned with ω so
the loss does not depend on the scale of P) are fitted with Adam from θ = log prior. The
memberships of every (query, candidate) pair are computed once, so each step is two
matrix-vector products.

Two families of fits share those memberships: from uniform ω, pulled toward equal weights
(`strengths`), and from each reference Ω the caller validates beside it (eq. 5 and Welch,
estimated without the held-out rows), pulled toward that Ω (`anchor_strengths`). The second
refines a closed form where it is already near what per-feature weights can do: on the
scenes' 15 broad classes the fits from uniform lost to Welch on held-out queries.

The start and strength λ are chosen on held-out labelled queries: the labelled rows (a seeded
sample of at most `sample_rows`) are split into fit rows and validation rows; validation
queries are ranked against the fit rows, and the fit with the best mAP wins (ties: the
stronger pull, and uniform's). The other estimators (eq. 5, Welch, uniform) are measured on
the same validation queries, so a build can choose between them (`--omega auto`).

Everything is numpy and seeded: the same rows, labels, τ and seed give the same ω.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from simdex.engine.metrics import rank_metrics
from simdex.engine.omega import ClassStats, OmegaError, OmegaInputs, _missing, make_omega

log = logging.getLogger(__name__)


@dataclass
class LearnedOmegaConfig:
    # labelled rows drawn (seeded): fit queries, their candidates, validation. On Fashion-MNIST
    # (200 features) 4,000 ranked better than 20,000 (mAP 0.428 vs 0.396, P@10 0.728 vs 0.721 on
    # 1,000 test queries): neighbours from a larger pool are harder and pull the fit to the very top
    sample_rows: int = 4000
    max_sample_values: int = 40_000_000  # bound on sample rows × d held in memory (float32)
    validation_share: float = 0.25  # of the sample, held out to choose λ (at most validation_queries)
    validation_queries: int = 300
    validation_gallery: int = 4000  # fit rows the validation queries are ranked against (at most)
    # fit queries (at most, see max_pair_values): on Fashion-MNIST 70k (1,113 features) 224 → 1,024 took test
    # P@10 from 0.802 to 0.806 at τ 1, and let `--tau auto` see what τ 0.7 is worth (held-out mAP 0.453 with 224
    # queries, 0.502 with 1,024; test P@10 0.810, mAP 0.496: benchmarks/results/tau_fmnist70k.md)
    fit_queries: int = 1024
    hard_candidates: int = 32  # nearest fit rows in z (L2) per query: the top of the ranking
    random_candidates: int = 32  # random fit rows per query: the rest of it
    positive_candidates: int = 32  # rows of the query's class (random) added when the others hold fewer
    # fine labels (an item's few copies): when a uniform sample leaves the median row fewer than this
    # many rows of its class, the sample is drawn as whole classes (at most group_rows rows each)
    min_partners: int = 4
    group_rows: int = 16
    # bound on queries × candidates × d held in memory (float32, 480 MB, made in place): with 892 features
    # (grid2) 6M let 70 queries fit, and learned Ω lost to Welch (test mAP 0.460 vs 0.468); 24M let 256 fit
    # (0.466, P@10 0.753 vs 0.741: Fashion-MNIST 12k, one-off run); 120M lets 1,024 fit 1,113 features
    max_pair_values: int = 120_000_000
    steps: int = 200
    learning_rate: float = 0.1
    strengths: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0)  # λ of the KL pull toward uniform
    # λ of the fits that start at a reference Ω (eq. 5, Welch: the closed forms validated beside it) and are
    # pulled toward it; none when empty. Where the closed forms are already near what per-feature weights
    # can do (the scenes' 15 classes), the fits from uniform lost to them on held-out queries; these refine them
    anchor_strengths: tuple[float, ...] = (0.0, 0.1, 1.0, 10.0)
    seed: int = 0


@dataclass
class LearnedOmega:
    omega: np.ndarray  # (d,) float64, ≥ 0, sums to 1
    strength: float  # the chosen λ
    tau: float  # the τ it was fitted for (the chosen one when several were tried)
    validation: dict[str, dict]  # estimator → {"map", "p@1", "p@10", "queries"} on the held-out queries
    record: dict  # what the build stores in its info


def closed_form_references(z: np.ndarray, labels: np.ndarray,
                           class_stats: ClassStats) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """`learn_omega`'s `reference`: eq. 5 (`clusters`) and Welch estimated from `class_stats` (of every row
    of z) without the held-out rows it is given, so their figures on those rows are honest and the fits
    that start from them (`anchor_strengths`) never saw those rows' labels."""

    def reference(val_rows: np.ndarray) -> dict[str, np.ndarray]:
        rest = class_stats.without(np.asarray(z[val_rows]), labels[val_rows])
        inputs = OmegaInputs(dim=z.shape[1], class_stats=rest)
        out = {}
        for name in ("clusters", "welch"):
            try:
                out[name] = make_omega(name).estimate(inputs)
            except OmegaError as exc:  # a class left with a single row
                log.info("no %s Ω to validate against: %s", name, exc)
        return out

    return reference


def gaussian_memberships(zq: np.ndarray, zc: np.ndarray, tau: float, out: np.ndarray | None = None) -> np.ndarray:
    """g = exp(−((zc − zq)/τ)²) (eq. 2), broadcast: zq (..., d) against zc (..., d), float32; into `out`
    when given (a float32 array of the broadcast shape, which may be zc itself: one array held)."""
    g = np.subtract(np.asarray(zc, np.float32), np.asarray(zq, np.float32), out=out)
    g *= np.float32(1.0 / tau)
    np.square(g, out=g)
    np.negative(g, out=g)
    return np.exp(g, out=g)


def _softmax(theta: np.ndarray) -> np.ndarray:
    e = np.exp(theta - theta.max())
    return e / e.sum()


def _class_codes(labels: np.ndarray) -> np.ndarray:
    codes: dict[object, int] = {}
    return np.array([codes.setdefault(v, len(codes)) for v in labels], np.int64)


def _by_class(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions sorted by class code, and each class's start and count in that order: class c's
    positions are order[starts[c] : starts[c] + counts[c]]."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    return order, np.concatenate([[0], np.cumsum(counts)[:-1]]), counts


def sample_labelled_rows(rows: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator,
                         min_partners: int = 4, group_rows: int = 16) -> tuple[np.ndarray, str]:
    """At most n of the labelled `rows` (sorted) for fitting and validating Ω, and how they were drawn.

    A ranking loss learns only from queries that have rows of their own class among the
    candidates. With broad classes (Fashion-MNIST: 6,000 rows each) a uniform sample gives every
    row hundreds of them; with fine ones (the scenes' items: a handful of copies each) a uniform
    4,000 of 90,000 rows leaves most rows alone in their class (56 of 256 fit queries were usable
    on the scenes). Then the sample is drawn as whole classes in random order (at most
    `group_rows` rows of each), so every sampled row has its class's other rows beside it.
    """
    if len(rows) <= n:
        return rows, "all"
    uniform = np.sort(rng.choice(rows, n, replace=False))
    codes = _class_codes(labels[uniform])
    partners = np.bincount(codes)[codes] - 1
    if np.median(partners) >= min_partners:
        return uniform, "uniform"
    by_class, starts, counts = _by_class(_class_codes(labels[rows]))
    picked, total = [], 0
    for c in rng.permutation(len(counts)):
        if counts[c] < 2:
            continue  # a class of one row has nothing to rank first
        members = rows[by_class[starts[c] : starts[c] + counts[c]]]
        if len(members) > group_rows:
            members = rng.choice(members, group_rows, replace=False)
        picked.append(members)
        total += len(members)
        if total >= n:
            break
    if not picked:
        return uniform, "uniform"
    return np.sort(np.concatenate(picked)), "classes"


def anchor_prior(omega: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """A reference Ω as a prior of `fit_simplex_weights`: every weight at least floor/d (the fit starts
    at log ω and a weight of 0 would stay 0), summing to 1."""
    w = np.maximum(np.asarray(omega, np.float64), floor / len(omega))
    return w / w.sum()


def log_priors(priors: np.ndarray | None, n_fits: int, d: int) -> np.ndarray:
    """log(d·prior) per fit, (n_fits, d): the θ a fit of `fit_simplex_weights` starts from and the term its
    KL pull subtracts; zeros (uniform) without priors."""
    if priors is None:
        return np.zeros((n_fits, d))
    return np.broadcast_to(np.log(np.asarray(priors, np.float64)) + np.log(d), (n_fits, d)).copy()


def _candidates(zf: np.ndarray, yf: np.ndarray, config: LearnedOmegaConfig, rng: np.random.Generator, tau: float):
    """Memberships G (queries, candidates, d) of sampled fit queries to their candidates, and relevance."""
    n = len(zf)
    n_cand = min(config.hard_candidates, n - 1) + min(config.random_candidates, n - 1) + config.positive_candidates
    n_q = max(1, min(config.fit_queries, n, config.max_pair_values // max(1, n_cand * zf.shape[1])))
    qi = np.sort(rng.choice(n, n_q, replace=False))
    n_hard = min(config.hard_candidates, n - 1)
    sq = np.einsum("ij,ij->i", zf, zf)
    d2 = sq[None, :] - 2 * (zf[qi] @ zf.T)  # (Q, n): ‖a − b‖² up to the query's own norm
    d2[np.arange(n_q), qi] = np.inf
    hard = np.argpartition(d2, n_hard - 1, axis=1)[:, :n_hard] if n_hard > 0 else np.zeros((n_q, 0), np.int64)
    n_rand = min(config.random_candidates, n - 1)
    rand = np.empty((n_q, n_rand), np.int64)
    for a, q in enumerate(qi):
        pick = rng.choice(n - 1, n_rand, replace=False)
        rand[a] = pick + (pick >= q)  # every row but the query itself
    cand = np.concatenate([hard, rand], axis=1)  # (Q, C)
    n_pos = config.positive_candidates
    if n_pos > 0:  # rows of the query's class, so that fine classes have something to rank first
        order, starts, counts = _by_class(yf)
        pos = np.empty((n_q, n_pos), np.int64)
        for a, q in enumerate(qi):
            members = order[starts[yf[q]] : starts[yf[q]] + counts[yf[q]]]
            members = members[members != q]
            if len(members) == 0:
                members = cand[a, :1]  # no other row of its class: a repeat of a candidate adds nothing
            pos[a] = rng.choice(members, n_pos, replace=len(members) < n_pos)
        cand = np.concatenate([cand, pos], axis=1)
    rel = yf[cand] == yf[qi][:, None]
    keep = rel.any(axis=1) & (~rel).any(axis=1)  # a query with only one kind of candidate teaches nothing
    if not keep.any():
        raise OmegaError("learned Ω: no sampled query has both a relevant and an irrelevant candidate")
    qi, cand, rel = qi[keep], cand[keep], rel[keep]
    G = zf[cand]  # (Q, C, d) float32, a copy: eq. 2 in place on it, so only one such array is ever held
    return gaussian_memberships(zf[qi][:, None, :], G, tau, out=G), rel


def fit_simplex_weights(G: np.ndarray, relevant: np.ndarray, strengths, steps: int = 200,
                        learning_rate: float = 0.1,
                        on_step: Callable[[int], None] | None = None,
                        priors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ω on the simplex minimising the softmax ranking loss over candidates plus λ·KL(ω ‖ prior),
    one fit per strength λ, all in the same passes over G (each step is memory-bound, so fitting
    several λ costs little more than one). Each fit starts at its prior.

    Args:
        G: memberships (queries, candidates, d) float32.
        relevant: (queries, candidates) bool; each query needs a relevant and an irrelevant candidate.
        strengths: the λ ≥ 0 to fit, (S,).
        on_step: called with the number of steps done after each step (a progress bar).
        priors: the Ω each fit starts from and is pulled toward, (S, d) or (d,), > 0 (`anchor_prior`);
            None: uniform.

    Returns:
        ω (S, d) float64, one row per λ, and the learned temperatures β (S,).

    Example:
        >>> G = np.array([[[1.0, 0.2], [0.1, 0.3]]], np.float32); rel = np.array([[True, False]])
        >>> w, _ = fit_simplex_weights(G, rel, [0.0]); bool(w[0, 0] > 0.5)
        True
    """
    lam = np.asarray(strengths, np.float64)[:, None]  # (S, 1)
    n_q, n_c, d = G.shape
    n_s = len(lam)
    Gf = G.reshape(-1, d)
    rel = relevant.astype(np.float64)[None]  # (1, Q, C)
    uniform_p = (Gf @ np.full(d, 1.0 / d, np.float32)).reshape(n_q, n_c)
    spread = float(np.mean(uniform_p.std(axis=1)))
    log_prior = log_priors(priors, n_s, d)
    theta = log_prior.copy()  # the prior itself; 0: uniform
    log_beta = np.full(n_s, np.log(1.0 / max(spread, 1e-6)))  # β P starts with a unit spread over candidates
    m, v = np.zeros((n_s, d + 1)), np.zeros((n_s, d + 1))
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        w = np.exp(theta - theta.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)  # (S, d)
        beta = np.exp(log_beta)[:, None, None]
        P = (Gf @ w.T.astype(np.float32)).T.reshape(n_s, n_q, n_c).astype(np.float64)
        s = beta * P
        e = np.exp(s - s.max(axis=2, keepdims=True))
        p_all = e / e.sum(axis=2, keepdims=True)
        e_pos = e * rel
        p_pos = e_pos / e_pos.sum(axis=2, keepdims=True)
        d_s = (p_all - p_pos) / n_q  # ∂L/∂s (S, Q, C)
        # Gᵀ·X rather than X·G: the same product, but OpenBLAS runs the transposed form several times faster
        grad_w = (Gf.T @ (d_s * beta).reshape(n_s, -1).T.astype(np.float32)).T  # (S, d)
        grad_w = grad_w.astype(np.float64) + lam * (np.log(np.maximum(w * d, 1e-300)) - log_prior + 1.0)  # ∂ λ KL
        grad = np.empty((n_s, d + 1))
        grad[:, :d] = w * (grad_w - np.sum(w * grad_w, axis=1, keepdims=True))  # through the softmax
        grad[:, d] = np.sum(d_s * s, axis=(1, 2))  # ∂s/∂log β = s
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        step = learning_rate * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        theta -= step[:, :d]
        log_beta -= step[:, d]
        if on_step is not None:
            on_step(t)
    w = np.exp(theta - theta.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True), np.exp(log_beta)


def validate_omegas(zq: np.ndarray, yq: np.ndarray, zg: np.ndarray, yg: np.ndarray, omegas: dict[str, np.ndarray],
                    tau: float) -> dict[str, dict]:
    """mAP, P@1 and P@10 of fuzzy P with each Ω: queries zq (q, d) ranked against zg (n, d)."""
    names = list(omegas)
    W = np.stack([np.asarray(omegas[k], np.float32) for k in names], axis=1)  # (d, m)
    sums = {k: np.zeros(3) for k in names}
    block = max(1, 4_000_000 // max(1, zg.size))  # queries per block: few large products, bounded memory
    for a in range(0, len(zq), block):
        G = gaussian_memberships(zq[a : a + block, None, :], zg[None], tau)  # (b, n, d)
        S = (G.reshape(-1, G.shape[2]) @ W).reshape(G.shape[0], G.shape[1], -1)  # (b, n, m)
        for b in range(G.shape[0]):
            relevant = yg == yq[a + b]
            for j, k in enumerate(names):
                r = rank_metrics(S[b, :, j], relevant, ks=(1, 10))
                sums[k] += (r["ap"], r["p@1"], r["p@10"])
    n = max(1, len(zq))
    return {k: {"map": float(s[0] / n), "p@1": float(s[1] / n), "p@10": float(s[2] / n), "queries": len(zq)}
            for k, s in sums.items()}


def learn_omega(z: np.ndarray, labels: np.ndarray, tau: float = 1.0, config: LearnedOmegaConfig | None = None,
                reference: dict[str, np.ndarray] | Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
                taus: tuple[float, ...] | None = None,
                progress: Callable[[int, int], None] | None = None) -> LearnedOmega:
    """Fit Ω for retrieval on labelled rows and validate it against other Ω on held-out queries.

    Args:
        z: z-scored kept features (rows, d); may be a memory map (only sampled rows are read).
        labels: class of each row (rows,), None where unknown.
        tau: τ of the Gaussian memberships.
        config: sample sizes, steps, strengths λ, seed.
        reference: other Ω to validate on the same queries ({name: ω}), or a function that gets the
            row numbers (into z) of the held-out rows and returns them (so they can be estimated
            without those rows' labels: `closed_form_references`). Uniform is always measured. Each is
            also a start of fits pulled toward it (`config.anchor_strengths`).
        taus: several τ to try instead of `tau` (`simdex build --tau auto`): Ω is fitted for each on
            the same sample and candidates and validated on the same held-out queries, and the τ whose
            learned Ω has the best held-out mAP wins (ties: the τ nearest 1); every τ's figures are
            recorded (`record["tau_search"]`).
        progress: called with (done, total) as the fit goes: `config.steps` optimisation steps and one
            validation per τ (minutes on a large build: what `simdex build` shows a bar for).

    Returns:
        the fitted Ω with the chosen λ, the validation figures and a record for the build's info.

    Raises:
        OmegaError: fewer than 2 classes, or too few labelled rows to hold some out.

    Example:
        >>> rng = np.random.default_rng(0); y = np.repeat([0, 1], 100).astype(object)
        >>> z = rng.normal(size=(200, 5)); z[:, 0] += 3 * y.astype(float)
        >>> fit = learn_omega(z, y); bool(fit.omega[0] == fit.omega.max())
        True
    """
    config = config or LearnedOmegaConfig()
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    labels = np.asarray(labels, dtype=object)
    rows = np.flatnonzero(~_missing(labels))
    sample_rows = min(config.sample_rows, max(1000, config.max_sample_values // max(1, z.shape[1])))
    rows, drawn = sample_labelled_rows(rows, labels, sample_rows, rng, config.min_partners, config.group_rows)
    if len({labels[r] for r in rows}) < 2:
        raise OmegaError("omega 'learned' needs labelled objects of at least 2 classes")
    if len(rows) < 8:
        raise OmegaError(f"omega 'learned' needs at least 8 labelled objects, found {len(rows)}")
    perm = rng.permutation(rows)
    n_val = max(2, min(config.validation_queries, int(round(config.validation_share * len(rows)))))
    val_rows, fit_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    codes = _class_codes(labels[rows])
    code_of = dict(zip(rows.tolist(), codes.tolist()))
    y = lambda r: np.array([code_of[i] for i in r], np.int64)  # noqa: E731
    zf, yf = np.asarray(z[fit_rows], np.float32), y(fit_rows)
    if len(np.unique(yf)) < 2:
        raise OmegaError("omega 'learned': the fit rows hold a single class; label more objects")

    others = reference(val_rows) if callable(reference) else dict(reference or {})
    zv, d = np.asarray(z[val_rows], np.float32), zf.shape[1]
    grid = sorted(dict.fromkeys(float(t) for t in (taus or (tau,))), key=lambda t: (abs(np.log(t)), t))
    state = copy.deepcopy(rng)  # every τ gets the same candidates and validation gallery
    trials = {}
    # the fits from uniform are there already: a reference named so adds none
    anchors = {k: anchor_prior(w) for k, w in others.items() if k != "uniform"} if config.anchor_strengths else {}
    # every fit, (start, λ), in the same passes over G: the twelve fits of a build step at 6.5/s where the four
    # from uniform stepped at 9.5/s (the scenes' classes, 1,174 features), most of a step is reading G
    keys = [("uniform", s) for s in config.strengths] + [(k, s) for k in anchors for s in config.anchor_strengths]
    priors = np.stack([np.full(d, 1.0 / d) if k == "uniform" else anchors[k] for k, _ in keys])
    names = [f"learned λ={s:g}" + ("" if k == "uniform" else f" from {k}") for k, s in keys]
    total = len(grid) * (config.steps + 1)
    report = progress or (lambda done, total: None)
    report(0, total)
    for n, t in enumerate(grid):  # nearest 1 first, so a tie keeps it
        rng = copy.deepcopy(state)
        G, relevant = _candidates(zf, yf, config, rng, t)
        base = n * (config.steps + 1)
        weights, betas = fit_simplex_weights(G, relevant, [s for _, s in keys], config.steps, config.learning_rate,
                                             on_step=lambda k, base=base: report(base + k, total), priors=priors)
        fitted = {name: (w, b, s, k) for name, (k, s), w, b in zip(names, keys, weights, betas)}
        del G
        vg = np.arange(len(fit_rows)) if len(fit_rows) <= config.validation_gallery else \
            np.sort(rng.choice(len(fit_rows), config.validation_gallery, replace=False))
        omegas = {k: v[0] for k, v in fitted.items()}
        omegas.update(others)
        omegas.setdefault("uniform", np.full(d, 1.0 / d))
        figures = validate_omegas(zv, y(val_rows), zf[vg], yf[vg], omegas, t)
        report(base + config.steps + 1, total)
        best = None
        # ties go to a fit from uniform over one from a reference, and to the stronger pull
        for key in sorted(names, key=lambda k: (fitted[k][3] != "uniform", -fitted[k][2])):
            if best is None or figures[key]["map"] > figures[best]["map"]:
                best = key
        w, beta, strength, start = fitted[best]
        trials[t] = {"omega": w, "beta": float(beta), "strength": strength, "start": start, "figures": figures,
                     "learned": figures[best], "pairs": relevant.shape, "gallery": len(vg), "fits": list(fitted)}
    tau = max(grid, key=lambda t: trials[t]["learned"]["map"])  # the first of equals: the nearest 1
    chosen = trials[tau]
    omega, beta, best, figures = chosen["omega"], chosen["beta"], chosen["strength"], chosen["figures"]
    start = chosen["start"]
    validation = {"learned": chosen["learned"], **{k: figures[k] for k in others}}
    validation.setdefault("uniform", figures["uniform"])
    record = {
        "seed": config.seed, "tau": tau, "sample_rows": int(len(rows)), "sample_drawn": drawn,
        "fit_rows": int(len(fit_rows)),
        "validation_queries": int(len(val_rows)), "validation_gallery": int(chosen["gallery"]),
        "fit_queries": int(chosen["pairs"][0]), "candidates_per_query": int(chosen["pairs"][1]),
        "strength": best, "start": start, "beta": beta,
        "strengths": {k.removeprefix("learned λ="): {"map": figures[k]["map"], "p@10": figures[k]["p@10"]}
                      for k in chosen["fits"]},
        "validation": validation, "config": asdict(config), "seconds": time.perf_counter() - started,
    }
    if len(grid) > 1:
        record["tau_search"] = {f"{t:g}": {"map": trials[t]["learned"]["map"], "p@10": trials[t]["learned"]["p@10"],
                                           "strength": trials[t]["strength"], "start": trials[t]["start"]}
                                 for t in sorted(grid)}
    log.info("learned Ω: τ = %g, λ = %g from %s, validation mAP %.4f (uniform %.4f) in %.1f s", tau, best, start,
             validation["learned"]["map"], validation["uniform"]["map"], record["seconds"])
    return LearnedOmega(omega=omega, strength=best, tau=tau, validation=validation, record=record)
