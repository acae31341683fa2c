"""Similarity maps (Stylianou et al., DESIGN §7): where on each image a P comes from.

P(v_i|v_q) = Σ_j ω_j g_ij (eq. 4) is a sum of per-feature terms, and every feature j
is a weighted mean over a window of one layer's map: x_ij = Σ_p w_p a_jp (w the
window's weights, summing to 1: uniform for `bbox` and grid cells, the downsampled
mask for `mask`). So each term can be split over the window's positions in
proportion to their share of x_ij,

    share_jp = w_p a_jp / x_ij          (Σ_p share_jp = 1),

and the map M_p = Σ_j ω_j g_ij share_jp sums exactly to P. A channel that is zero over
the whole window (x_ij = 0, common after ReLU) has no shares; its term is spread by
the window's own weights, so no part of P is lost. Maps of layers with a coarser
resolution are carried to the input's pixels by area overlap, which keeps each map's
sum, so the pixel map of an image sums to P as well. Each image of a pair gets its own
map from the same terms: the answer's shows where the answer matches the query, the
query's where the query matches the answer.

Arrays in, arrays out (numpy only; the feature maps come from `simdex.indexer.feature_maps`).

Example:
    >>> t = np.array([0.25, 0.5])                      # ω_j g_ij of two kept channels
    >>> a = np.array([[[1.0, 3.0]], [[0.0, 0.0]]])      # (C=2, h=1, w=2), channel 1 silent
    >>> split_terms(t, np.array([0, 1]), a, np.array([[0.5, 0.5]])).tolist()
    [[0.3125, 0.4375]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def feature_terms(g: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """ω_j g_ij for one answer: float64 (d,), summing to P (eq. 4 with Σ ω = 1).

    Args:
        g: (d,) the answer's memberships to the query (what ranked it).
        omega: (d,) feature weights; normalised here so that they sum to 1.
    """
    omega = np.asarray(omega, np.float64)
    return np.asarray(g, np.float64).reshape(-1) * (omega / omega.sum())


def position_shares(acts: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Each channel's share of its window mean at every position: (C, h, w) → (C, h, w), each channel summing to 1.

    Args:
        acts: (C, h, w) activations of the channels (≥ 0 after ReLU; any sign works where x ≠ 0).
        window: (h, w) the window's weights (sum 1, zero outside the window).
    """
    window = np.asarray(window, np.float64)
    contrib = np.asarray(acts, np.float64) * window[None]  # (C, h, w): w_p a_jp
    x = contrib.sum(axis=(1, 2))  # (C,) = x_ij
    silent = np.abs(x) <= 1e-12 * np.maximum(np.abs(contrib).sum(axis=(1, 2)), 1e-30)
    shares = contrib / np.where(silent, 1.0, x)[:, None, None]
    shares[silent] = window  # a silent channel: spread by the window itself
    return shares


def split_terms(terms: np.ndarray, channels: np.ndarray, acts: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The map (h, w) of the terms of one window's kept features: Σ_j terms_j · share_jp.

    Args:
        terms: (d_e,) ω_j g_ij of the kept features read from this window.
        channels: (d_e,) their channel in `acts`.
        acts: (C, h, w) the layer's activations of the image.
        window: (h, w) the window's weights.
    Returns:
        float64 (h, w) summing to terms.sum().
    """
    channels = np.asarray(channels, np.int64)
    if len(channels) == 0:
        return np.zeros(np.shape(window))
    shares = position_shares(np.asarray(acts)[channels], window)  # (d_e, h, w)
    return np.tensordot(np.asarray(terms, np.float64), shares, axes=1)


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): how much of input cell i lands in output cell o when a side of n_in cells is laid
    over one of n_out cells covering the same length (columns sum to 1, so sums are kept)."""
    edges_in = np.arange(n_in + 1) / n_in
    edges_out = np.arange(n_out + 1) / n_out
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    return np.clip(hi - lo, 0, None) * n_in


def to_pixels(layer_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map at a layer's resolution (h, w) → the input's pixels (H, W), its sum kept.

    Each layer position covers a block of the input (H/h × W/w pixels, fractional when
    h does not divide H); its value is spread over that block in proportion to area.
    """
    h, w = np.shape(layer_map)
    H, W = size
    return area_matrix(h, H) @ np.asarray(layer_map, np.float64) @ area_matrix(w, W).T


@dataclass
class EntryLayout:
    """Where the kept features live: for each kept feature, its φ entry (a layer, or a layer's cell for
    `gridG`) and its channel within the layer; for each φ entry, the model layer whose map it reads."""

    entry: np.ndarray  # (d,) index into φ's entries
    channel: np.ndarray  # (d,) channel within the layer
    layer_of_entry: np.ndarray  # (E,) index of the model layer of each entry

    @classmethod
    def from_phi(cls, kept: np.ndarray, phi: list[dict], cells: int = 1) -> EntryLayout:
        """`phi` as the catalog records it ([{name, channels, offset}] in feature order, `cells`
        consecutive entries per model layer for `gridG`) and the build's kept raw-feature indices."""
        offsets = np.array([p["offset"] for p in phi])
        kept = np.asarray(kept, np.int64)
        entry = np.searchsorted(offsets, kept, side="right") - 1
        return cls(entry=entry, channel=kept - offsets[entry], layer_of_entry=np.arange(len(phi)) // cells)


def entry_maps(terms: np.ndarray, layout: EntryLayout, acts: list[np.ndarray], windows: list[np.ndarray]) -> dict[int, np.ndarray]:
    """The map of every φ entry with kept features, at its layer's resolution.

    Args:
        terms: (d,) ω_j g_ij (`feature_terms`).
        layout: where each kept feature is read.
        acts: per model layer, the image's activations (C_l, h_l, w_l).
        windows: per φ entry, the object's window weights (h_l, w_l) at that layer.
    Returns:
        {entry index: float64 (h_l, w_l)}; all maps together sum to terms.sum() = P.
    """
    out = {}
    for e in np.unique(layout.entry):
        sel = layout.entry == e
        out[int(e)] = split_terms(terms[sel], layout.channel[sel], acts[layout.layer_of_entry[e]], windows[e])
    return out


def pixel_map(maps: dict[int, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """The sum of entry maps carried to the input's pixels: float64 (H, W), summing to Σ of the maps."""
    total = np.zeros(size)
    for m in maps.values():
        total += to_pixels(m, size)
    return total
