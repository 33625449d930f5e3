"""Augmentation policies on FUN coefficients (``RandAugment``, ``TrivialAugmentWide``) and two
JPEG-domain-only operations (``FrequencyDropout``, ``ChromaDropout``; new, not in torchvision).

The policies follow torchvision's ``RandAugment`` / ``TrivialAugmentWide`` (op drawn uniformly per
image, torchvision's magnitude tables for ``num_magnitude_bins`` bins, a random sign for signed
ops), drawn independently for every batch item, over the operations that are exact here:

=============  =====================================  ==========================================
op             what                                   fidelity
=============  =====================================  ==========================================
Identity       nothing                                exact
Brightness     ``adjust_brightness(1 + m)``           exact up to the pixel clamp
Color          ``adjust_saturation(1 + m)``           exact up to the pixel clamp
Contrast       ``adjust_contrast(1 + m)``             exact up to the pixel clamp
TranslateX/Y   ``affine(translate=int(m))`` pixels    the shift is rounded to whole 8-pixel blocks
                                                      (``round(int(m) / 8)``); exact for that shift
=============  =====================================  ==========================================

torchvision's ShearX/Y, Rotate (±30°/±135°), Sharpness, Posterize, Solarize, AutoContrast and
Equalize are not offered: shears and small rotations resample pixels across blocks, and the others
are non-linear in the pixel values (they need the decoded pixels, the slow path this library
avoids). With fewer ops each remaining one is drawn more often than in torchvision's policy; pass
``ops=`` to choose the set, e.g. adding the JPEG-only ``"FrequencyDropout"`` and ``"ChromaDropout"``.
Translations fill with ``fill`` (an RGB value, torchvision's default black 0).

Within an item the ops apply in the drawn order (colour changes before a translation are applied
before it, so the fill blocks are not recoloured, as in torchvision); colour ops that follow each
other are composed into one affine map (``funloader.color.ColorAffine``), one pass.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .channels import ZIGZAG
from .color import ColorAffine, _as_batch
from .errors import UsageError
from .transform_base import DCTTransform

__all__ = ["drop_frequencies", "drop_chroma", "FrequencyDropout", "ChromaDropout", "RandAugment",
           "TrivialAugmentWide", "RANDAUGMENT_OPS", "JPEG_OPS"]

#: zigzag position (0..63) of the frequency of each of the 192 FUN channels
_ZIGZAG_RANK = np.tile(np.argsort(np.asarray(ZIGZAG)), 3)

#: torchvision's ops that are exact in the DCT domain (translations: to whole blocks)
RANDAUGMENT_OPS = ("Identity", "Brightness", "Color", "Contrast", "TranslateX", "TranslateY")
#: JPEG-domain-only ops (not in torchvision)
JPEG_OPS = ("FrequencyDropout", "ChromaDropout")


def _keep_gain(keep_y, keep_chroma) -> torch.Tensor:
    """``(N, 192)`` float64 0/1: keep the lowest ``keep_y`` zigzag frequencies of Y and ``keep_chroma`` of Cb, Cr."""
    rank = torch.from_numpy(_ZIGZAG_RANK)[None, :]
    limit = torch.cat([keep_y[:, None].expand(-1, 64), keep_chroma[:, None].expand(-1, 128)], dim=1)
    return (rank < limit).to(torch.float64)


def _counts(value, count: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.int64).reshape(-1)
    if t.numel() == 1:
        t = t.expand(count)
    if t.shape[0] != count:
        raise UsageError(f"{name}: {t.shape[0]} values for {count} items")
    if bool(((t < 1) | (t > 64)).any()):
        raise UsageError(f"{name} must be in 1..64 (the DC is always kept), got {t.tolist()}")
    return t


def drop_frequencies(x, keep):
    """Zero every frequency past the lowest ``keep`` (1..64, one value or one per item) in zigzag
    order, in all three components: an ideal low-pass per 8x8 block (JPEG-only; the DC, hence the
    block means, always kept). Exact and free (a per-channel mask); works on raw integers too."""
    t, restore = _mask_batch(x, "drop_frequencies")
    keep_t = _counts(keep, t.shape[0], "keep")
    return restore(t * _keep_gain(keep_t, keep_t).to(device=t.device, dtype=t.dtype)[:, :, None, None])


def drop_chroma(x, keep=1):
    """Keep only the lowest ``keep`` zigzag chroma frequencies (default 1: each block's mean colour,
    chroma flat over 8x8 pixels); luma untouched. JPEG-only; exact, a per-channel mask."""
    t, restore = _mask_batch(x, "drop_chroma")
    keep_t = _counts(keep, t.shape[0], "keep")
    return restore(t * _keep_gain(torch.full_like(keep_t, 64), keep_t).to(device=t.device, dtype=t.dtype)[:, :, None, None])


def _mask_batch(x, name):
    was_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if was_numpy else x
    if not isinstance(t, torch.Tensor) or t.ndim < 3 or t.shape[-3] != 192:
        raise UsageError(f"{name}: expected FUN coefficients (..., 192, H8, W8), got {getattr(t, 'shape', type(t))}")
    shape = t.shape
    batch = t.reshape(-1, *shape[-3:])

    def restore(out):
        out = out.reshape(shape)
        return out.numpy() if was_numpy else out
    return batch, restore


class _ChannelMask(DCTTransform):
    """Per-item 0/1 channel gains: fused into the decode by the CPU loader (``channel_affine``)."""

    integer_exact = True
    fusable = True

    def gains(self, count: int, generator=None) -> torch.Tensor:
        raise NotImplementedError

    def channel_affine(self, count: int, generator=None):
        gain = self.gains(count, generator)
        return gain, torch.zeros_like(gain)

    def __call__(self, x, generator: Optional[torch.Generator] = None):
        t, restore = _mask_batch(x, type(self).__name__)
        gain = self.gains(t.shape[0], generator).to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.int16)
        return restore(t * gain[:, :, None, None])


class FrequencyDropout(_ChannelMask):
    """New (not in torchvision): per item, with probability ``p``, keep only the lowest ``k`` zigzag
    frequencies of every component, ``k`` uniform in ``keep = (min, max)`` (1..64); see
    ``drop_frequencies``. A random per-block low-pass: free here, costly in pixels."""

    def __init__(self, p: float = 0.5, keep: Tuple[int, int] = (16, 64)):
        if not 0.0 <= float(p) <= 1.0:
            raise UsageError(f"p must be in [0, 1], got {p}")
        low, high = (int(v) for v in keep)
        if not 1 <= low <= high <= 64:
            raise UsageError(f"keep must be (min, max) with 1 <= min <= max <= 64, got {keep}")
        self.p, self.keep = float(p), (low, high)

    def gains(self, count, generator=None):
        chosen = torch.rand(count, generator=generator) < self.p
        k = torch.randint(self.keep[0], self.keep[1] + 1, (count,), generator=generator)
        k = torch.where(chosen, k, torch.full_like(k, 64))
        return _keep_gain(k, k)

    def __repr__(self):
        return f"FrequencyDropout(p={self.p}, keep={self.keep})"


class ChromaDropout(_ChannelMask):
    """New (not in torchvision): per item, with probability ``p``, keep only the lowest ``keep``
    zigzag chroma frequencies (default 1: flat colour per block; 0 is greyscale, i.e.
    ``RandomGrayscale``); see ``drop_chroma``."""

    def __init__(self, p: float = 0.5, keep: int = 1):
        if not 0.0 <= float(p) <= 1.0:
            raise UsageError(f"p must be in [0, 1], got {p}")
        if not 0 <= int(keep) <= 64:
            raise UsageError(f"keep must be in 0..64, got {keep}")
        self.p, self.keep = float(p), int(keep)

    def gains(self, count, generator=None):
        chosen = torch.rand(count, generator=generator) < self.p
        k = torch.where(chosen, torch.full((count,), self.keep), torch.full((count,), 64))
        return _keep_gain(torch.full((count,), 64), k)

    def __repr__(self):
        return f"ChromaDropout(p={self.p}, keep={self.keep})"


# ----------------------------------------------------------------------------------------------
# policies
def _magnitude_table(name: str, bins: int, grid: Tuple[int, int], wide: bool):
    """torchvision's ``_augmentation_space`` entry ``(magnitudes (bins,) float64 or None, signed)``."""
    H, W = grid
    if name == "Identity":
        return None, False
    if name in ("Brightness", "Color", "Contrast"):
        return torch.linspace(0.0, 0.99 if wide else 0.9, bins, dtype=torch.float64), True
    if name == "TranslateX":
        return torch.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * 8 * W, bins, dtype=torch.float64), True
    if name == "TranslateY":
        return torch.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * 8 * H, bins, dtype=torch.float64), True
    if name == "FrequencyDropout":  # fraction of the 63 AC frequencies dropped (ours)
        return torch.linspace(0.0, 0.9, bins, dtype=torch.float64), False
    if name == "ChromaDropout":
        return None, False
    raise UsageError(f"unknown or inexact augmentation op {name!r}; available: {RANDAUGMENT_OPS + JPEG_OPS}")


class _Policy(DCTTransform):
    integer_exact = False
    runs_normalized = True  # split(normalization=) runs it on a normalised batch (the loader's fused decode)
    _wide = False

    def __init__(self, num_magnitude_bins: int, ops: Optional[Sequence[str]], fill):
        from .geometry import fill_coefficients

        if int(num_magnitude_bins) < 2:
            raise UsageError(f"num_magnitude_bins must be >= 2, got {num_magnitude_bins}")
        self.num_magnitude_bins = int(num_magnitude_bins)
        self.ops = tuple(RANDAUGMENT_OPS if ops is None else ops)
        if not self.ops:
            raise UsageError("ops must name at least one operation")
        for name in self.ops:
            _magnitude_table(name, 2, (1, 1), self._wide)  # validates the name
        self.fill = fill
        self._fill = torch.from_numpy(fill_coefficients(fill)).to(torch.float64)
        self._cache: dict = {}

    def _bins(self, rounds: int, count: int, generator) -> torch.Tensor:
        raise NotImplementedError

    def _tables(self, grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(n_ops, bins)`` float64 magnitudes (0 for ops without one) and ``(n_ops,)`` bool signed."""
        cached = self._cache.get(grid)
        if cached is None:
            values = torch.zeros(len(self.ops), self.num_magnitude_bins, dtype=torch.float64)
            signed = torch.zeros(len(self.ops), dtype=torch.bool)
            for index, name in enumerate(self.ops):
                table, sign = _magnitude_table(name, self.num_magnitude_bins, grid, self._wide)
                if table is not None:
                    values[index] = table
                signed[index] = sign
            cached = self._cache[grid] = (values, signed)
        return cached

    def params(self, count: int, grid: Tuple[int, int], generator=None):
        """Per round ``(op index (N,), signed magnitude (N,) float64)``, drawn as ``__call__`` does."""
        rounds = self._rounds
        ops = torch.randint(len(self.ops), (rounds, count), generator=generator)
        bins = self._bins(rounds, count, generator)
        negative = torch.randint(2, (rounds, count), generator=generator) == 1
        values, signed = self._tables(tuple(grid))
        magnitude = values[ops, bins]
        magnitude = torch.where(negative & signed[ops], -magnitude, magnitude)
        return [(ops[r], magnitude[r]) for r in range(rounds)]

    def __call__(self, x, generator: Optional[torch.Generator] = None):
        batch, restore = _as_batch(x, type(self).__name__)
        out, gain, bias = self.split(batch, generator)
        if gain is not None:
            out = torch.addcmul(bias.to(device=out.device, dtype=out.dtype)[:, :, None, None], out,
                                gain.to(device=out.device, dtype=out.dtype)[:, :, None, None])
        elif out is batch:
            out = batch.clone()
        return restore(out)

    def split(self, batch: torch.Tensor, generator: Optional[torch.Generator] = None,
              normalization: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, in_place: bool = False):
        """The policy on a batch ``(N, 192, H8, W8)`` float as ``(moved, gain, bias)``: block shifts
        (and the colour maps drawn before a shift) applied, the remaining colour maps and frequency
        masks as a per-item per-channel affine ``moved * gain + bias`` (``(N, 192)`` float64, or None
        when there is none; ``moved`` may be ``batch`` itself then). Same draws as ``__call__``.

        ``normalization``: ``(scale, shift)`` (192,) when ``batch`` is already normalised
        (``scale * x + shift``, see ``channels.normalization_affine``): the fill, the contrast mean and
        the returned affine are then those of the normalised batch (``channels.map_on_normalized``).
        ``in_place``: shift blocks inside ``batch`` (``moved`` is ``batch``) instead of a copy."""
        batch, _ = _as_batch(batch, type(self).__name__)
        N, _, H, W = batch.shape
        return self.apply_drawn(batch, self.params(N, (H, W), generator), normalization, in_place)

    def apply_drawn(self, batch: torch.Tensor, drawn, normalization: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                    in_place: bool = False):
        """:meth:`split` with the draws ``drawn`` (:meth:`params` of these items) already made."""
        from .channels import map_on_normalized, normalized_value, unnormalized

        def colour_input(x):  # what ColorAffine's contrast mean reads: the unnormalised Y DC
            return x if normalization is None else unnormalized(x, *normalization, channels=slice(0, 1))

        def on_batch(gain, bias):
            return (gain, bias) if normalization is None else map_on_normalized(gain, bias, *normalization)
        N = batch.shape[0]
        code = self._codes()
        out = batch
        pending = ColorAffine(N)
        touched = np.zeros(N, dtype=bool)  # items with a pending colour map
        keep_y = np.full(N, 64)
        keep_c = np.full(N, 64)
        fill = self._fill if normalization is None else normalized_value(self._fill, *normalization)
        fill = fill.to(device=batch.device, dtype=batch.dtype)[:, None, None]
        for op_t, magnitude_t in drawn:
            op, magnitude = op_t.numpy(), magnitude_t.numpy()
            # torchvision: translate=[int(magnitude), 0] pixels; here rounded to whole blocks
            blocks = np.round(np.trunc(magnitude) / 8.0).astype(np.int64)
            for item in np.flatnonzero(((op == code["TranslateX"]) | (op == code["TranslateY"])) & (blocks != 0)):
                if out is batch and not in_place:
                    out = batch.clone()
                if touched[item]:  # colour ops drawn before this translation apply first (the fill is not recoloured)
                    items = torch.tensor([item])
                    one = out[item:item + 1]
                    g, b = on_batch(*pending.subset(items).gain_bias(colour_input(one)))
                    one.mul_(g.to(device=one.device, dtype=one.dtype)[:, :, None, None])
                    one.add_(b.to(device=one.device, dtype=one.dtype)[:, :, None, None])
                    pending.reset(items)
                    touched[item] = False
                dy, dx = (0, int(blocks[item])) if op[item] == code["TranslateX"] else (int(blocks[item]), 0)
                _shift_in_place(out[item], dy, dx, fill)
            for name, step in (("Brightness", pending.brightness), ("Color", pending.saturation),
                               ("Contrast", pending.contrast)):
                chosen = op == code[name]
                if chosen.any():
                    step(1.0 + magnitude_t, where=torch.from_numpy(chosen))
                    touched |= chosen
            keep_y, keep_c = _dropouts(op, magnitude, code, keep_y, keep_c)
        gain = bias = None
        if touched.any():
            gain, bias = pending.gain_bias(colour_input(out))
        if (keep_y < 64).any() or (keep_c < 64).any():  # 0/1 frequency masks commute with colour maps and shifts
            mask = _keep_gain(torch.from_numpy(keep_y), torch.from_numpy(keep_c))
            gain, bias = (mask, torch.zeros_like(mask)) if gain is None else (gain * mask, bias * mask)
        if gain is not None:
            gain, bias = on_batch(gain, bias)
        return out, gain, bias

    def _codes(self) -> dict:
        """Op name -> its index in ``self.ops`` (-1: not in this policy)."""
        index = {name: i for i, name in enumerate(self.ops)}
        return {name: index.get(name, -1) for name in RANDAUGMENT_OPS + JPEG_OPS}

    def fused(self, drawn, grid: Tuple[int, int]) -> "FusedPolicy":
        """The draws ``drawn`` (:meth:`params`) as work for a decode that can move blocks and apply a
        per-item per-channel affine (``read_batch``'s block maps and gain/bias), plus a small finish
        on the decoded batch (:meth:`FusedPolicy.finish`): the same result as :meth:`split` up to
        float rounding.

        Per item the ops are, in drawn order, colour maps and block shifts. Colour maps (brightness,
        saturation, contrast's scale, the frequency masks) are per-channel affines and commute with
        shifts, so all of them compose into the decode's affine; the shifts compose into its block
        maps (index -1 for the uncovered blocks). What the decode cannot do is left to ``finish``:
        the uncovered blocks get the fill, recoloured by the colour maps drawn after the shift; and a
        contrast adds ``(1 - c) * mean(Y DC)`` of the image it applies to, read from the decoded Y DC
        plane. A contrast drawn before the first shift needs the mean of blocks the shift drops: such
        an item's shifts are decoded as rolls (``rolled``: every block of the image is in the decoded
        plane once), and its uncovered blocks are then rewritten in all channels. An item with a
        contrast between two shifts is decoded without the policy and finished by
        :meth:`apply_drawn` (``slow``; not drawn by ``RandAugment(2, m)``).

        Fill blocks: the decode gives an uncovered block ``bias``, the recoloured zero; a flat fill
        colour differs from it only in the DC channels (0, 64, 128; the colour maps add nothing to
        the AC channels), so only those are rewritten. A caller whose own affine (before the
        policy) adds to AC channels must not use this."""
        H, W = (int(v) for v in grid)
        N = int(drawn[0][0].shape[0]) if drawn else 0
        code = self._codes()
        rows = np.tile(np.arange(H), (N, 1))
        cols = np.tile(np.arange(W), (N, 1))
        row_stage = np.full((N, H), -1)
        col_stage = np.full((N, W), -1)
        pre_gain = torch.ones(N, 192, dtype=torch.float64)  # the colour maps before each item's last shift
        pre_bias = torch.zeros(N, 192, dtype=torch.float64)
        since = ColorAffine(N)  # the colour maps since each item's last shift
        fills: list = []  # per shift round: (N, 192) the fill coefficients, recoloured by the maps up to the last shift
        shifted = np.zeros(N, dtype=bool)  # items with a shift so far
        rolled = np.zeros(N, dtype=bool)  # items with a contrast before their first shift
        first_mean_gain = torch.zeros(N, dtype=torch.float64)  # that contrast's Y DC mean gain
        later_y_gain = torch.ones(N, dtype=torch.float64)  # the Y gain of the maps after the first shift
        slow = np.zeros(N, dtype=bool)
        keep_y = np.full(N, 64)
        keep_c = np.full(N, 64)
        for op_t, magnitude_t in drawn:
            op, magnitude = op_t.numpy(), magnitude_t.numpy()
            blocks = np.round(np.trunc(magnitude) / 8.0).astype(np.int64)  # as in apply_drawn
            moving = ((op == code["TranslateX"]) | (op == code["TranslateY"])) & (blocks != 0)
            contrast = (since.dc_mean_gain != 0).numpy()
            slow |= moving & contrast & shifted
            starts_rolled = moving & contrast & ~shifted & ~slow
            rolled |= starts_rolled
            first_mean_gain[starts_rolled] = since.dc_mean_gain[starts_rolled]
            items = np.flatnonzero(moving & ~slow)
            if len(items):  # (masks and torch.where, not index_put: small ops that stay on this thread)
                chosen = torch.from_numpy(moving & ~slow)
                g, b = since.gain_bias(mean_dc=torch.zeros(N, dtype=torch.float64))
                later_y_gain = torch.where(chosen & torch.from_numpy(shifted), later_y_gain * since.y_gain,
                                           later_y_gain)
                rows_chosen = chosen[:, None]
                pre_gain = torch.where(rows_chosen, g * pre_gain, pre_gain)
                pre_bias = torch.where(rows_chosen, g * pre_bias + b, pre_bias)
                fills = [torch.where(rows_chosen, g * fill + b, fill) for fill in fills]
                since.reset(torch.from_numpy(items))
                stage = len(fills)
                fills.append(torch.where(rows_chosen, self._fill[None, :], torch.zeros(1, 192, dtype=torch.float64)))
                along_x = op[items] == code["TranslateX"]
                rows[items], row_stage[items] = _shifted(rows[items], row_stage[items],
                                                         np.where(along_x, 0, blocks[items]), stage, rolled[items])
                cols[items], col_stage[items] = _shifted(cols[items], col_stage[items],
                                                         np.where(along_x, blocks[items], 0), stage, rolled[items])
                shifted[items] = True
            for name, step in (("Brightness", since.brightness), ("Color", since.saturation),
                               ("Contrast", since.contrast)):
                chosen = op == code[name]
                if chosen.any():
                    step(1.0 + magnitude_t, where=torch.from_numpy(chosen))
            keep_y, keep_c = _dropouts(op, magnitude, code, keep_y, keep_c)
        later_y_gain = torch.where(torch.from_numpy(shifted), later_y_gain * since.y_gain, later_y_gain)
        last_gain, last_bias = since.gain_bias(mean_dc=torch.zeros(N, dtype=torch.float64))  # contrast mean: in finish
        gain, bias = last_gain * pre_gain, last_gain * pre_bias + last_bias
        fills = [last_gain * fill + last_bias for fill in fills]
        if (keep_y < 64).any() or (keep_c < 64).any():
            mask = _keep_gain(torch.from_numpy(keep_y), torch.from_numpy(keep_c))
            gain, bias, fills = gain * mask, bias * mask, [fill * mask for fill in fills]
        if slow.any():  # decoded as is, finished by apply_drawn
            chosen = torch.from_numpy(slow)[:, None]
            gain, bias = torch.where(chosen, 1.0, gain), torch.where(chosen, 0.0, bias)
            rows[slow], cols[slow] = np.arange(H), np.arange(W)
            row_stage[slow], col_stage[slow] = -1, -1
            rolled &= ~slow
        no = torch.zeros(N, dtype=torch.float64)
        mean_gain = torch.where(torch.from_numpy(slow), no, since.dc_mean_gain)
        first_mean_gain = torch.where(torch.from_numpy(rolled), first_mean_gain * later_y_gain, no)
        return FusedPolicy(self, drawn, slow, rolled, torch.from_numpy(rows), torch.from_numpy(cols), row_stage,
                           col_stage, gain, bias, fills, mean_gain, since.y_gain.clone(), since.dc_bias.clone(),
                           first_mean_gain)


def _mean_dc(array: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """(n,) float64 mean unnormalised Y DC of each item of a normalised batch ``array`` (n, 192, H8, W8)."""
    return (array[:, 0].mean(axis=(1, 2), dtype=np.float64) - shift) / scale


_DC_CHANNELS = np.array([0, 64, 128])  # the DC channel of Y, Cb, Cr
_ALL_CHANNELS = np.arange(192)


def _dropouts(op, magnitude, code, keep_y, keep_c):
    """The zigzag counts kept after one round of draws (FrequencyDropout, ChromaDropout)."""
    dropped = op == code["FrequencyDropout"]
    kept = 64 - np.round(magnitude * 63).astype(np.int64)
    keep_y = np.where(dropped, np.minimum(keep_y, kept), keep_y)
    keep_c = np.where(dropped, np.minimum(keep_c, kept), keep_c)
    return keep_y, np.where(op == code["ChromaDropout"], np.minimum(keep_c, 1), keep_c)


def _shifted(source: np.ndarray, stage: np.ndarray, by: np.ndarray, new_stage: int, roll: np.ndarray):
    """Block maps (K, L) (output index -> source index, -1: fill) and their fill stages after moving
    each image ``by`` (K,) blocks (down/right when positive; as :func:`_shift_in_place`); where
    ``roll`` (K,) bool, the uncovered blocks take the blocks moved out (the maps stay a permutation)."""
    length = source.shape[1]
    taken = np.arange(length)[None, :] - by[:, None]
    inside = (taken >= 0) & (taken < length)
    taken = taken % length
    moved = np.take_along_axis(source, taken, axis=1)
    return (np.where(inside | roll[:, None], moved, -1),
            np.where(inside, np.take_along_axis(stage, taken, axis=1), new_stage))


class FusedPolicy:
    """A policy's draws for a chunk as decode work (:meth:`_Policy.fused`): ``rows`` (N, H8) / ``cols``
    (N, W8) int64 block maps of the policy's input (-1: a fill block), ``gain``/``bias`` (N, 192)
    float64 the per-channel map of the unnormalised coefficients, ``slow`` (N,) bool the items left
    to :meth:`_Policy.apply_drawn`; :meth:`finish` does the rest on the decoded chunk."""

    def __init__(self, policy, drawn, slow, rolled, rows, cols, row_stage, col_stage, gain, bias, fills, mean_gain,
                 last_y_gain, last_dc_bias, first_mean_gain):
        self.policy, self.drawn, self.slow, self.rolled = policy, drawn, slow, rolled
        self.rows, self.cols, self.gain, self.bias = rows, cols, gain, bias
        self._row_stage, self._col_stage, self._fills = row_stage, col_stage, fills
        # per item, numpy float64 (finish works on numpy views: many small steps, called per few items)
        self._mean_gain, self._last_y_gain = mean_gain.numpy(), last_y_gain.numpy()
        self._last_dc_bias = last_dc_bias.numpy()
        self._first_mean_gain = first_mean_gain.numpy()  # a contrast before the first shift, times the Y gains after it
        self._dc_gain, self._dc_bias = gain[:, 0].numpy(), bias[:, 0].numpy()
        self._fill_work = None  # (scale, shift, _fill_writes(scale, shift))

    def _fill_writes(self, scale, shift):
        """The writes of the fill blocks, in stage order: ``(items (k,) sorted, rows or columns (k,), axis,
        channels (c,), values (k, c, 1) normalised float64)``; channels: the DCs (0, 64, 128), or all for
        rolled items (their uncovered blocks hold blocks rolled in)."""
        from .channels import normalized_value

        writes = []
        for stage, fill in enumerate(self._fills):
            values = normalized_value(fill, scale, shift).numpy()
            for stages, axis in ((self._row_stage, 2), (self._col_stage, 3)):
                hit = stages == stage  # (N, H8) or (N, W8): the uncovered rows / columns
                for whole, channels in ((False, _DC_CHANNELS), (True, _ALL_CHANNELS)):
                    items, lines = np.nonzero(hit & (self.rolled[:, None] == whole))
                    if len(items):
                        writes.append((items, lines, axis, channels, values[items[:, None], channels[None, :]][:, :, None]))
        return writes

    def finish(self, chunk: torch.Tensor, normalization: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
               start: int = 0) -> None:
        """Complete the policy in place on ``chunk`` (items ``start..start+len(chunk)-1``; shape
        (n, 192, H8, W8) float CPU tensor), decoded with ``rows``, ``cols``, ``gain``, ``bias`` (then
        normalised by ``normalization`` = ``(scale, shift)`` (192,), if given): the fills, the contrast
        mean terms and the ``slow`` items."""
        stop = start + chunk.shape[0]
        scale, shift = normalization if normalization is not None else (torch.ones(192), torch.zeros(192))
        dc_scale, dc_shift = float(scale.reshape(-1)[0]), float(shift.reshape(-1)[0])
        array = chunk.numpy()  # numpy views and assignments (torch's indexed writes would start its threads)
        first_gain = self._first_mean_gain[start:stop]
        if first_gain.any():  # rolled items: the whole image is in the plane (permuted)
            source = (_mean_dc(array, dc_scale, dc_shift) - self._dc_bias[start:stop]) / self._dc_gain[start:stop]
            array[:, 0] += (first_gain * source * dc_scale).astype(array.dtype)[:, None, None]
        if self._fill_work is None or self._fill_work[0] is not scale or self._fill_work[1] is not shift:
            self._fill_work = (scale, shift, self._fill_writes(scale, shift))
        for items, lines, axis, channels, values in self._fill_work[2]:  # in stage order: later fills cover earlier
            low, high = np.searchsorted(items, (start, stop))
            if low == high:
                continue
            at, value = items[low:high, None] - start, values[low:high].astype(array.dtype)  # value (k, c, 1)
            if axis == 2:
                array[at, channels[None, :], lines[low:high, None], :] = value
            else:
                array[at, channels[None, :], :, lines[low:high, None]] = value
        mean_gain = self._mean_gain[start:stop]
        if mean_gain.any():  # contrast: Y DC += mean_gain * mean(Y DC of the image the last maps get)
            before = (_mean_dc(array, dc_scale, dc_shift) - self._last_dc_bias[start:stop]) / self._last_y_gain[start:stop]
            array[:, 0] += (mean_gain * before * dc_scale).astype(array.dtype)[:, None, None]
        if self.slow[start:stop].any():
            self._finish_slow(chunk, normalization, start)

    def _finish_slow(self, chunk, normalization, start) -> None:
        for item in np.flatnonzero(self.slow[start:start + chunk.shape[0]]):
            one, at = chunk[item:item + 1], item + start
            moved, gain, bias = self.policy.apply_drawn(one, [(o[at:at + 1], m[at:at + 1]) for o, m in self.drawn],
                                                        normalization, in_place=True)
            if gain is not None:
                one.mul_(gain.to(one.dtype)[:, :, None, None])
                one.add_(bias.to(one.dtype)[:, :, None, None])


def _shift_in_place(image: torch.Tensor, dy: int, dx: int, fill: torch.Tensor) -> None:
    """Move ``image`` (C, H, W) down ``dy`` and right ``dx`` blocks in place; uncovered blocks = ``fill`` (C, 1, 1)."""
    C, H, W = image.shape
    kept = image[:, max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)].clone()
    image[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = kept
    for band in ((slice(0, dy), slice(None)) if dy > 0 else (slice(H + dy, H), slice(None)) if dy < 0 else None,
                 (slice(None), slice(0, dx)) if dx > 0 else (slice(None), slice(W + dx, W)) if dx < 0 else None):
        if band is not None:
            image[:, band[0], band[1]] = fill


class RandAugment(_Policy):
    """torchvision ``RandAugment(num_ops, magnitude, num_magnitude_bins)`` over the exact ops (see
    the module): per item, ``num_ops`` rounds of an op drawn uniformly with the fixed magnitude bin
    ``magnitude`` and a random sign."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 ops: Optional[Sequence[str]] = None, fill=0):
        super().__init__(num_magnitude_bins, ops, fill)
        if int(num_ops) < 0:
            raise UsageError(f"num_ops must be >= 0, got {num_ops}")
        if not 0 <= int(magnitude) < self.num_magnitude_bins:
            raise UsageError(f"magnitude must be in 0..{self.num_magnitude_bins - 1}, got {magnitude}")
        self.num_ops, self.magnitude = int(num_ops), int(magnitude)

    @property
    def _rounds(self):
        return self.num_ops

    def _bins(self, rounds, count, generator):
        return torch.full((rounds, count), self.magnitude, dtype=torch.int64)

    def __repr__(self):
        return (f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"num_magnitude_bins={self.num_magnitude_bins}, ops={self.ops}, fill={self.fill!r})")


class TrivialAugmentWide(_Policy):
    """torchvision ``TrivialAugmentWide(num_magnitude_bins)`` over the exact ops: per item one op
    drawn uniformly with a uniformly drawn magnitude bin (the "wide" magnitude tables) and sign."""

    _wide = True
    _rounds = 1

    def __init__(self, num_magnitude_bins: int = 31, ops: Optional[Sequence[str]] = None, fill=0):
        super().__init__(num_magnitude_bins, ops, fill)

    def _bins(self, rounds, count, generator):
        return torch.randint(self.num_magnitude_bins, (rounds, count), generator=generator)

    def __repr__(self):
        return f"TrivialAugmentWide(num_magnitude_bins={self.num_magnitude_bins}, ops={self.ops}, fill={self.fill!r})"
