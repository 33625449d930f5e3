"""Fidelity of the DCT-domain augmentations against torchvision's pixel definitions, on real photos.

For every 4:4:4 photo of the shared corpus (full resolution chroma, so both sides see the same
pixels; up to 512x512 px of each) and each operation: the inverse block DCT of our output, in YCbCr,
against the torchvision definition applied to Pillow's RGB decode (converted to YCbCr). Per operation:

* ``clamped``: the share of pixels where the formula leaves [0, 255] at some step (torchvision
  clamps there, the coefficients do not) or Pillow's decode clamped;
* ``PSNR all`` over all pixels (the clamp effect included) and ``PSNR unclamped`` over the others;
* ``formula``: the lowest PSNR, over the photos, against the formula our operation claims to compute
  exactly, applied to our own float decode without clamps (for the rounded translations: torchvision's
  translate by the rounded amount; for the hue: the (Cb, Cr) rotation). inf or >= 100 dB = exact.

The groups: the colour operations; ``ColorJitter`` as a whole (draws fixed per photo, torchvision's
sequence with the same order and factors); each op of ``RandAugment`` / ``TrivialAugmentWide`` alone,
through the policy, at torchvision's magnitude for ``RandAugment(2, 9)`` (bin 9 of 31) and at
``TrivialAugmentWide``'s extremes (bin 30 of 31), both signs (translations rounded to whole blocks
also against torchvision's translate by the rounded amount); the block-exact geometry and mixing.
The oracle formulas are the tests' (tests/pixel_reference.py, each citing the torchvision function).
Last, the rotations and transposes against ``jpegtran``'s coefficients on every baseline photo.

    python benchmarks/augment_fidelity.py [--data ../shared/data] [--output benchmarks/results/augment_fidelity.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import funloader  # noqa: E402
from funloader import transforms as T  # noqa: E402
from pixel_reference import (JPEGTRAN_OPS, block_lowpass, cbcr_rotation, fun_to_planes, jitter_draws, photos, policy_seed,  # noqa: E402
                             psnr, rgb_to_ycbcr, tv_adjust_brightness, tv_adjust_contrast, tv_adjust_hue,
                             tv_adjust_saturation, tv_apply_op, tv_color_jitter_steps, tv_randaugment_magnitude,
                             tv_rgb_to_grayscale3, tv_translate, ycbcr_to_rgb)


class Photo:
    """One photo: ``fun`` (1, 192, H8, W8) float64 dequantised coefficients, ``rgb`` Pillow's decode
    (3, 8*H8, 8*W8) float64, ``decoded`` our float decode in RGB (unclamped), ``index``."""

    def __init__(self, path: Path, index: int, max_blocks: int):
        fun = funloader.read_fun(str(path), dequantize=True)
        with Image.open(path) as im:
            H, W = min(im.height // 8, max_blocks), min(im.width // 8, max_blocks)
            self.rgb = np.asarray(im.convert("RGB"), np.float64)[:8 * H, :8 * W].transpose(2, 0, 1)
        self.fun = torch.from_numpy(np.ascontiguousarray(fun[None, :, :H, :W])).double()
        self.decoded = ycbcr_to_rgb(fun_to_planes(self.fun[0].numpy()))
        self.index, self.name = index, path.name


def _in_range(rgb, margin=0.5):
    return np.all((rgb >= -margin) & (rgb <= 255 + margin), axis=0)


def _nothing_clamps(stages):
    """Pixels where every stage of the unclamped formula stays in [0, 255] (the first, the moved
    decode, with 0.5 of slack for Pillow's rounding)."""
    mask = _in_range(stages[0])
    for stage in stages[1:]:
        mask &= _in_range(stage, 0.0)
    return mask


class Row:
    """One measured operation: ``ours(photo) -> (fun out, info)``, ``reference(photo, info) -> RGB``
    (torchvision on Pillow's decode), ``formula(photo, info) -> list of RGB stages`` (the exact formula
    on our decode, unclamped; the first stage the decode as moved, the last the result)."""

    def __init__(self, name, group, ours, reference, formula, result_clamps=True):
        self.name, self.group, self.ours, self.reference, self.formula = name, group, ours, reference, formula
        self.result_clamps = result_clamps  # False: the definition has no clamp (the JPEG-only dropouts)
        self.values = {"clamped": [], "all": [], "unclamped": [], "formula": []}
        self.info = []

    def measure(self, photo: Photo):
        out, info = self.ours(photo)
        planes = fun_to_planes(out[0].numpy())
        expected = rgb_to_ycbcr(self.reference(photo, info))
        stages = self.formula(photo, info)
        mask = _nothing_clamps(stages if self.result_clamps else stages[:-1])
        self.values["clamped"].append(float(1.0 - mask.mean()))
        self.values["all"].append(psnr(planes, expected))
        self.values["unclamped"].append(psnr(planes, expected, mask))
        self.values["formula"].append(psnr(planes, rgb_to_ycbcr(stages[-1])))
        if info:
            self.info.append(info)

    def summary(self):
        v = self.values
        row = {"group": self.group, "photos": len(v["all"]), "clamped_pixels_mean": float(np.mean(v["clamped"])),
               "psnr_all_median": float(np.median(v["all"])), "psnr_all_min": float(np.min(v["all"])),
               "psnr_unclamped_median": float(np.median(v["unclamped"])),
               "psnr_unclamped_min": float(np.min(v["unclamped"])), "psnr_formula_min": float(np.min(v["formula"]))}
        shifts = [i for i in self.info if "requested_px" in i]
        if shifts:
            errors = [abs(i["applied_px"] - i["requested_px"]) for i in shifts]
            row.update(requested_px=sorted({i["requested_px"] for i in shifts}),
                       applied_px=sorted({i["applied_px"] for i in shifts}),
                       rounding_error_px_max=int(max(errors)), rounding_error_px_median=float(np.median(errors)))
        return row


# ---------------------------------------------------------------- the rows
def colour_rows():
    def single(name, ours, tv, factor):
        return Row(name, "colour", lambda p: (ours(p.fun, factor), None), lambda p, i: tv(p.rgb, factor),
                   lambda p, i: [p.decoded, tv(p.decoded, factor, clamp=False)])

    def hue(factor):
        return Row(f"hue {factor} (CbCr rotation vs HSV)", "colour", lambda p: (T.adjust_hue(p.fun, factor), None),
                   lambda p, i: tv_adjust_hue(p.rgb, factor), lambda p, i: [p.decoded, cbcr_rotation(p.decoded, factor)])

    return [
        Row("identity (decode only)", "colour", lambda p: (p.fun, None), lambda p, i: p.rgb, lambda p, i: [p.decoded]),
        single("brightness 0.6", T.adjust_brightness, tv_adjust_brightness, 0.6),
        single("brightness 1.4", T.adjust_brightness, tv_adjust_brightness, 1.4),
        single("contrast 0.6", T.adjust_contrast, tv_adjust_contrast, 0.6),
        single("contrast 1.4", T.adjust_contrast, tv_adjust_contrast, 1.4),
        single("saturation 0.6", T.adjust_saturation, tv_adjust_saturation, 0.6),
        single("saturation 1.4", T.adjust_saturation, tv_adjust_saturation, 1.4),
        Row("grayscale", "colour", lambda p: (T.rgb_to_grayscale(p.fun), None), lambda p, i: tv_rgb_to_grayscale3(p.rgb),
            lambda p, i: [p.decoded, tv_rgb_to_grayscale3(p.decoded)]),
        hue(0.05), hue(0.1), hue(-0.1),
    ]


def jitter_rows():
    """``ColorJitter`` as a whole: one draw per photo (the generator seeded with the photo's index),
    torchvision's sequence (clamp after every op) with the same order and factors."""
    def row(name, jitter):
        def ours(p):
            out = jitter(p.fun, torch.Generator().manual_seed(p.index))
            order, factors = jitter_draws(jitter, 1, torch.Generator().manual_seed(p.index))
            return out, {"order": order[0], "factors": factors[0]}

        def reference(p, info):
            steps = tv_color_jitter_steps(p.rgb, info["order"], info["factors"])
            return steps[-1] if steps else p.rgb

        def formula(p, info):
            return [p.decoded] + tv_color_jitter_steps(p.decoded, info["order"], info["factors"], clamp=False,
                                                       hue=cbcr_rotation)
        return Row(name, "ColorJitter", ours, reference, formula)

    return [row("ColorJitter(0.4, 0.4, 0.4)", T.ColorJitter(0.4, 0.4, 0.4)),
            row("ColorJitter(0.4, 0.4, 0.4, 0.1) (hue: CbCr rotation vs HSV)", T.ColorJitter(0.4, 0.4, 0.4, 0.1))]


def _policy_row(label, group, make, name, bin_index, sign, wide, rounded=False):
    """``name`` alone through the policy ``make(ops=[name])``, at torchvision's magnitude for
    ``bin_index`` of 31 with ``sign`` (the draw chosen by seed), against torchvision's ``_apply_op``
    (``rounded``: a translation against torchvision's translate by the block-rounded amount)."""
    policy = make(ops=[name])

    def magnitude(p):
        size = tuple(8 * s for s in p.fun.shape[-2:])
        tv = tv_randaugment_magnitude(name, 31, bin_index, size, wide)
        if name == "FrequencyDropout":  # ours: the fraction of the 63 AC frequencies dropped
            tv = float(np.linspace(0.0, 0.9, 31)[bin_index])
        return None if tv is None else sign * tv

    def ours(p):
        m = magnitude(p)
        out = policy(p.fun, torch.Generator().manual_seed(policy_seed(policy, tuple(p.fun.shape[-2:]), m)))
        info = {"magnitude": m}
        if name.startswith("Translate"):
            info.update(requested_px=int(m), applied_px=8 * int(round(int(m) / 8)))
        return out, info

    def pixel_op(rgb, info, clamp, rounded):
        m = info["magnitude"]
        if name == "FrequencyDropout":
            keep = 64 - int(round(63 * m))
            return ycbcr_to_rgb(block_lowpass(rgb_to_ycbcr(rgb), keep, keep))
        if name == "ChromaDropout":
            return ycbcr_to_rgb(block_lowpass(rgb_to_ycbcr(rgb), 64, 1))
        if rounded and name.startswith("Translate"):
            m = info["applied_px"]
        return tv_apply_op(rgb, name, m, 0.0, clamp)

    def formula(p, info):
        moved = pixel_op(p.decoded, info, False, True)
        return [moved] if name.startswith("Translate") or name == "Identity" else [p.decoded, moved]

    return Row(label, group, ours, lambda p, info: pixel_op(p.rgb, info, True, rounded), formula,
               result_clamps=not name.endswith("Dropout"))


def policy_rows():
    rows = []
    for group, make, bin_index, wide in (("RandAugment(2, 9)", lambda ops: T.RandAugment(1, 9, ops=ops), 9, False),
                                         ("TrivialAugmentWide extremes", lambda ops: T.TrivialAugmentWide(ops=ops), 30, True)):
        for name in ("Identity", "Brightness", "Color", "Contrast", "TranslateX", "TranslateY", "FrequencyDropout",
                     "ChromaDropout"):
            signs = (1.0, -1.0) if name in ("Brightness", "Color", "Contrast", "TranslateX", "TranslateY") else (1.0,)
            if wide and name in ("Identity", "ChromaDropout"):
                continue  # no magnitude: the same as RandAugment's
            for sign in signs:
                label = f"{group}: {name}" + ("" if len(signs) == 1 else " +" if sign > 0 else " -")
                rows.append(_policy_row(label, group, make, name, bin_index, sign, wide))
                if name.startswith("Translate") and not wide:
                    rows.append(_policy_row(label + " vs the rounded shift", group, make, name, bin_index, sign, wide,
                                            rounded=True))
    return rows


def exact_rows():
    """The block-exact geometry and the mixing: equal to the pixel operation (decode-level PSNR)."""
    def box(p):
        H, W = p.fun.shape[-2:]
        return H // 4, W // 4, H // 2, W // 2

    def erase_pixels(rgb, p):
        top, left, h, w = box(p)
        out = rgb.copy()
        out[:, 8 * top:8 * (top + h), 8 * left:8 * (left + w)] = 0.0  # torchvision erase(v=0)
        return out

    def pixel_box(p):  # no side on a block edge
        H, W = p.fun.shape[-2:]
        return 2 * H + 3, 2 * W + 5, 4 * H + 1, 4 * W - 3

    def erase_pixel_box(rgb, p):
        top, left, h, w = pixel_box(p)
        out = rgb.copy()
        out[:, top:top + h, left:left + w] = 0.0  # torchvision erase(v=0)
        return out

    def other(p):  # a second image of the same size for the mixing: the photo turned upside down
        return np.ascontiguousarray(p.rgb[:, ::-1, ::-1]), np.ascontiguousarray(p.decoded[:, ::-1, ::-1])

    def mixed(p):
        pair = torch.cat([p.fun, T.rotate(p.fun, 180)])
        return T.mixup(pair, 0.3)[:1], None

    def cutmixed(p):
        pair = torch.cat([p.fun, T.rotate(p.fun, 180)])
        top, left, h, w = box(p)
        return T.cutmix(pair, (top, left, top + h, left + w))[1:], None

    def paste(a, b, p):
        top, left, h, w = box(p)
        out = b.copy()  # item 1 gets item 0's box (x.roll(1, 0))
        out[:, 8 * top:8 * (top + h), 8 * left:8 * (left + w)] = a[:, 8 * top:8 * (top + h), 8 * left:8 * (left + w)]
        return out

    return [
        Row("rotate 90 (clockwise; torchvision rotate(-90))", "geometry", lambda p: (T.rotate(p.fun, 90), None),
            lambda p, i: np.rot90(p.rgb, -1, (1, 2)), lambda p, i: [np.rot90(p.decoded, -1, (1, 2))]),
        Row("transpose", "geometry", lambda p: (T.transpose(p.fun), None),
            lambda p, i: p.rgb.transpose(0, 2, 1), lambda p, i: [p.decoded.transpose(0, 2, 1)]),
        Row("erase (8-aligned box, fill 0)", "geometry", lambda p: (T.erase(p.fun, *box(p), fill=0), None),
            lambda p, i: erase_pixels(p.rgb, p), lambda p, i: [erase_pixels(p.decoded, p)]),
        Row("erase_pixels (box not on block edges, fill 0)", "geometry",
            lambda p: (T.erase_pixels(p.fun, *pixel_box(p), fill=0), None),
            lambda p, i: erase_pixel_box(p.rgb, p), lambda p, i: [erase_pixel_box(p.decoded, p)]),
        Row("translate (-2, 3) blocks, fill 0", "geometry", lambda p: (T.translate(p.fun, -2, 3, fill=0), None),
            lambda p, i: tv_translate(p.rgb, 24, -16), lambda p, i: [tv_translate(p.decoded, 24, -16)]),
        Row("mixup lam 0.3 (with the photo turned 180)", "mixing", mixed,
            lambda p, i: 0.3 * p.rgb + 0.7 * other(p)[0], lambda p, i: [0.3 * p.decoded + 0.7 * other(p)[1]]),
        Row("cutmix (8-aligned box from the photo turned 180)", "mixing", cutmixed,
            lambda p, i: paste(p.rgb, other(p)[0], p), lambda p, i: [paste(p.decoded, other(p)[1], p)]),
    ]


def translate_rounding():
    """The block rounding of the policies' translations over all 31 magnitude bins: how many bins
    are whole blocks, and the largest error in pixels (TrivialAugmentWide; RandAugment at 224 px)."""
    out = {}
    for label, wide, size in (("TrivialAugmentWide", True, (224, 224)), ("RandAugment at 224x224 px", False, (224, 224))):
        px = [int(tv_randaugment_magnitude("TranslateX", 31, k, size, wide)) for k in range(31)]
        errors = [abs(8 * int(round(v / 8)) - v) for v in px]
        out[label] = {"bins_exact": int(sum(e == 0 for e in errors)), "bins": 31, "error_px_max": int(max(errors)),
                      "error_px_mean": float(np.mean(errors)), "requested_px": px}
    return out


def jpegtran_equality(data: Path):
    """Rotations and transposes against ``jpegtran``'s lossless ones, coefficient for coefficient, on
    every baseline photo of the corpus (all subsamplings), cropped by jpegtran to whole 16x16 MCUs:
    per op, how many files give identical quantised coefficients."""
    files = [f for s in ("4:4:4", "4:2:0", "4:2:2", "4:4:0") for f in photos(data, s, limit=1000)]
    counts = {op: {"files": 0, "identical": 0} for op in JPEGTRAN_OPS}
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            with Image.open(path) as im:
                width, height = 16 * (im.width // 16), 16 * (im.height // 16)
            aligned, turned = Path(tmp) / "aligned.jpg", Path(tmp) / "turned.jpg"
            subprocess.run(["jpegtran", "-crop", f"{width}x{height}+0+0", "-outfile", str(aligned), str(path)],
                           check=True, timeout=60)
            original = funloader.read_fun(str(aligned))
            for op, ours in JPEGTRAN_OPS.items():
                subprocess.run(["jpegtran", *op.split(), "-outfile", str(turned), str(aligned)], check=True, timeout=60)
                counts[op]["files"] += 1
                counts[op]["identical"] += int(np.array_equal(ours(original), funloader.read_fun(str(turned))))
    return counts


def measure(data: Path, max_blocks: int = 64):
    rows = colour_rows() + jitter_rows() + policy_rows() + exact_rows()
    files = photos(data, "4:4:4", limit=1000)
    for index, path in enumerate(files):
        photo = Photo(path, index, max_blocks)
        for row in rows:
            row.measure(photo)
    summary = {row.name: row.summary() for row in rows}
    summary["translation rounding (all 31 bins)"] = translate_rounding()
    summary["jpegtran equality (quantised coefficients)"] = jpegtran_equality(data)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    summary = measure(args.data)
    print(f"{'operation':58s} {'clamped':>8s} {'PSNR all (med/min)':>19s} {'unclamped (med/min)':>20s} {'formula min':>11s}")
    for name, row in summary.items():
        if "psnr_all_median" not in row:
            continue
        print(f"{name[:58]:58s} {100 * row['clamped_pixels_mean']:7.2f}% {row['psnr_all_median']:8.1f} / {row['psnr_all_min']:5.1f}"
              f" {row['psnr_unclamped_median']:9.1f} / {row['psnr_unclamped_min']:5.1f} {row['psnr_formula_min']:10.1f}"
              + (f"  shift {row['requested_px']} -> {row['applied_px']} px" if "requested_px" in row else ""))
    for label, row in summary["translation rounding (all 31 bins)"].items():
        print(f"translation rounding, {label}: {row['bins_exact']}/31 bins whole blocks, error <= {row['error_px_max']} px "
              f"(mean {row['error_px_mean']:.2f})")
    for op, row in summary["jpegtran equality (quantised coefficients)"].items():
        print(f"jpegtran {op}: {row['identical']}/{row['files']} photos with identical coefficients")
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
