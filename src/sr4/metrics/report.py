"""Write an evaluation's results: per-image CSV, summary JSON, and an HTML report with crops.

Everything goes through ``sr4.utils.atomic`` (images through ``sr4.image.io.write_image``, which
is atomic too), so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import io
import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from sr4.image.resize import imresize
from sr4.metrics.evaluate import LOWER_BETTER, EvalResult, ImageResult, read_rgb8
from sr4.metrics.weights import resolve_root
from sr4.utils.atomic import atomic_write_text

LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "dists": "DISTS", "niqe": "NIQE",
          "clipiqa": "CLIP-IQA", "maniqa": "MANIQA", "musiq": "MUSIQ"}


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


#: the files `write_report` writes into its folder, and the sub-folder for crop images (so that
#: an --out equal to SR_DIR never has its crops scored by the next run).
REPORT_FILES = ("metrics.csv", "summary.json", "report.html")
CROPS_DIR = "crops"
CSV_HEADER = ("image", "sr_file", "hr_file", "width", "height")


def csv_text(value: str) -> str:
    """A text cell a spreadsheet shows as text: a leading = + - @ (or tab / CR) would start a
    formula, so such cells get a leading apostrophe (the OWASP CSV-injection rule)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def write_csv(result: EvalResult, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    metrics = list(result.config.metrics)
    w.writerow([*CSV_HEADER, *metrics, "notes"])
    for r in result.images:
        w.writerow([csv_text(r.key), csv_text(str(r.sr)), csv_text(str(r.hr)), r.width, r.height,
                    *[repr(float(r.values[m])) if m in r.values else "" for m in metrics],
                    csv_text("; ".join(r.notes))])
    atomic_write_text(path, buf.getvalue())


def foreign_report_files(out_dir: Path) -> list[Path]:
    """Files in `out_dir` that `write_report` would replace but that sr4 eval did not write."""
    foreign = []
    for name in REPORT_FILES:
        path = Path(out_dir) / name
        if os.path.lexists(path) and not _written_by_eval(path):
            foreign.append(path)
    return foreign


def _written_by_eval(path: Path) -> bool:
    try:
        if not path.is_file() or path.is_symlink():
            return False
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    if path.name == "metrics.csv":
        return head.startswith(",".join(CSV_HEADER) + ",")
    if path.name == "summary.json":
        return head.lstrip().startswith("{") and '"sr4_version"' in head
    return "<title>sr4 eval</title>" in head


def _json_num(v):
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return None
    return v


def summary(result: EvalResult, sr_dir: Path, hr_dir: Path, outputs: dict[str, Any]) -> dict:
    from sr4 import __version__

    cfg = result.config
    return {
        "sr4_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sr_dir": str(sr_dir),
        "hr_dir": str(hr_dir),
        "device": result.device,
        "seed": cfg.seed,
        "settings": {
            "metrics": list(cfg.metrics),
            "fidelity": asdict(cfg.fidelity),
            "niqe": asdict(cfg.niqe),
            "sr_pattern": cfg.sr_pattern,
            "resize_mismatch": cfg.resize_mismatch,
            "weights_dir": str(resolve_root(cfg.weights_dir)),
        },
        "metric_versions": result.versions,
        "images_scored": len(result.images),
        "averages": {k: _json_num(v) for k, v in result.averages.items()},
        "counts": result.counts,
        "score": result.score,
        "score_missing": result.score_missing,
        "unavailable": result.unavailable,
        "errors": [{"file": f, "problem": p} for f, p in result.errors],
        "outputs": outputs,
    }


# ----------------------------------------------------------------------------- plots


def box_plot_svg(values: list[float], label: str, width: int = 420, height: int = 70) -> str:
    """A horizontal box plot (quartiles, min/max whiskers) with every image as a dot."""
    vals = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    esc = html.escape(label)
    if vals.size == 0:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20">'
                f'<text x="4" y="14">{esc}: no values</text></svg>')
    lo, hi = float(vals.min()), float(vals.max())
    span = hi - lo or 1.0
    pad = 12

    def x(v: float) -> float:
        return pad + (v - lo) / span * (width - 2 * pad)

    q1, med, q3 = (float(np.percentile(vals, q)) for q in (25, 50, 75))
    mid = 34
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{esc}">',
        f'<line x1="{x(lo):.1f}" y1="{mid}" x2="{x(hi):.1f}" y2="{mid}" stroke="#888"/>',
        f'<rect x="{x(q1):.1f}" y="{mid - 10}" width="{max(x(q3) - x(q1), 1):.1f}" height="20" '
        'fill="#cfe0f5" stroke="#35618f"/>',
        f'<line x1="{x(med):.1f}" y1="{mid - 10}" x2="{x(med):.1f}" y2="{mid + 10}" '
        'stroke="#17324f" stroke-width="2"/>',
    ]
    rng = np.random.default_rng(0)  # fixed jitter: the same data draws the same picture
    for v in vals:
        parts.append(f'<circle cx="{x(float(v)):.1f}" cy="{mid + rng.uniform(-6, 6):.1f}" r="2" fill="#c0392b" '
                     f'fill-opacity="0.7"/>')
    parts += [
        f'<text x="{pad}" y="{height - 6}" font-size="11">{lo:.4g}</text>',
        f'<text x="{width - pad}" y="{height - 6}" font-size="11" text-anchor="end">{hi:.4g}</text>',
        f'<text x="{width / 2:.0f}" y="12" font-size="11" text-anchor="middle">{esc}: median {med:.4g}, '
        f'n={vals.size}</text>',
        "</svg>",
    ]
    return "".join(parts)


# ----------------------------------------------------------------------------- crops


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "image"


def _worst_window(sr: np.ndarray, hr: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the size x size window with the largest mean absolute error."""
    err = np.abs(sr.astype(np.float32) - hr.astype(np.float32)).mean(axis=2)
    h, w = err.shape
    step = max(size // 2, 1)
    best, at = -1.0, (0, 0)
    for y in range(0, max(h - size, 0) + 1, step):
        for x in range(0, max(w - size, 0) + 1, step):
            e = float(err[y : y + size, x : x + size].mean())
            if e > best:
                best, at = e, (y, x)
    return at


def bicubic_baseline(hr: np.ndarray, lr: np.ndarray | None = None, scale: int = 4) -> np.ndarray:
    """Bicubic x4 of the LR image (made from HR with MATLAB imresize as the challenge did, if not given)."""
    if lr is None:
        lr = imresize(hr, 1.0 / scale)
    up = imresize(lr, scale)[: hr.shape[0], : hr.shape[1]]
    if up.shape != hr.shape:  # an LR image that is not HR / 4: show it at the HR size
        up = imresize(lr, size=hr.shape[:2])
    return up


def write_crops(r: ImageResult, folder: Path, tag: str, crop: int = 64, zoom: int = 4,
                lr_dir: Path | None = None) -> dict[str, str]:
    from sr4.image.io import write_image

    sr, hr = read_rgb8(r.sr), read_rgb8(r.hr)
    lr = None
    if lr_dir is not None and (Path(lr_dir) / r.sr.name).is_file():
        lr = read_rgb8(Path(lr_dir) / r.sr.name)
    if sr.shape != hr.shape:
        sr = imresize(sr, size=hr.shape[:2])
    size = min(crop, hr.shape[0], hr.shape[1])
    y, x = _worst_window(sr, hr, size)
    views = {"bicubic": bicubic_baseline(hr, lr), "sr": sr, "hr": hr}
    out = {}
    for kind, img in views.items():
        patch = img[y : y + size, x : x + size]
        patch = np.repeat(np.repeat(patch, zoom, axis=0), zoom, axis=1)  # nearest: pixels stay visible
        name = f"{tag}_{_safe(r.key)}_{kind}.png"
        write_image(folder / name, patch)
        out[kind] = name
    out["window"] = f"x={x}, y={y}, {size}x{size} px, shown x{zoom}"
    return out


# ----------------------------------------------------------------------------- HTML


def ranking_metric(result: EvalResult) -> str | None:
    for m in ("lpips", "dists", "psnr", "ssim", "musiq", "clipiqa", "maniqa", "niqe"):
        if result.counts.get(m):
            return m
    return None


def write_report(result: EvalResult, out_dir: Path, sr_dir: Path, hr_dir: Path, lr_dir: Path | None = None,
                 upscaled: dict | None = None) -> dict[str, Path]:
    """Write metrics.csv, summary.json, report.html and the crop PNGs; return their paths."""
    out_dir = Path(out_dir)
    csv_path, json_path, html_path = out_dir / "metrics.csv", out_dir / "summary.json", out_dir / "report.html"
    write_csv(result, csv_path)

    rank = ranking_metric(result)
    showcase: list[tuple[str, ImageResult, dict[str, str]]] = []
    if rank is not None:
        scored = [r for r in result.images if math.isfinite(r.values.get(rank, math.nan))]
        if scored:
            ordered = sorted(scored, key=lambda r: r.values[rank], reverse=rank not in LOWER_BETTER)
            picks = [("best", ordered[0])] + ([("worst", ordered[-1])] if len(ordered) > 1 else [])
            for tag, r in picks:
                crops = write_crops(r, out_dir / CROPS_DIR, tag, lr_dir=lr_dir)
                crops.update({k: f"{CROPS_DIR}/{v}" for k, v in crops.items() if k != "window"})
                showcase.append((tag, r, crops))

    outputs = {"csv": csv_path.name, "summary": json_path.name, "report": html_path.name,
               "crops": [v for _, _, c in showcase for k, v in c.items() if k != "window"]}
    info = summary(result, sr_dir, hr_dir, outputs)
    if upscaled:
        info["upscaled"] = upscaled
    atomic_write_text(json_path, json.dumps(info, indent=2) + "\n")
    atomic_write_text(html_path, render_html(result, sr_dir, hr_dir, rank, showcase, upscaled))
    return {"csv": csv_path, "summary": json_path, "report": html_path}


_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eef}td.l,th.l{text-align:left}
.crops img{image-rendering:pixelated;margin-right:6px;border:1px solid #999}.bad{color:#a00}
figure{display:inline-block;margin:0 8px 8px 0}figcaption{font-size:12px;text-align:center}"""


def render_html(result: EvalResult, sr_dir: Path, hr_dir: Path, rank: str | None,
                showcase: list[tuple[str, ImageResult, dict[str, str]]], upscaled: dict | None = None) -> str:
    from sr4 import __version__

    e = html.escape
    metrics = list(result.config.metrics)
    p = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sr4 eval</title><style>{_CSS}</style>"
         "</head><body>", "<h1>sr4 eval</h1>",
         f"<p>SR: <code>{e(str(sr_dir))}</code><br>HR: <code>{e(str(hr_dir))}</code><br>"
         f"{len(result.images)} image pairs scored on {e(result.device)}, sr4 {e(__version__)}, "
         f"seed {result.config.seed}. PSNR/SSIM: {e(result.config.fidelity.label())}.</p>"]
    if upscaled:
        p.append(f"<p>SR images made by sr4 from <code>{e(str(upscaled.get('lr_dir')))}</code> with "
                 f"<code>{e(str(upscaled.get('model')))}</code>.</p>")

    p.append("<h2>Averages</h2><table><tr><th class=l>metric</th><th>average</th><th>images</th>"
             "<th class=l>better</th><th class=l>implementation</th></tr>")
    for m in metrics:
        if m in result.unavailable:
            p.append(f"<tr><td class=l>{e(LABELS[m])}</td><td class=bad colspan=4 style='text-align:left'>"
                     f"unavailable: {e(result.unavailable[m])}</td></tr>")
            continue
        p.append(f"<tr><td class=l>{e(LABELS[m])}</td><td>{_fmt(result.averages.get(m))}</td>"
                 f"<td>{result.counts.get(m, 0)}</td><td class=l>{'lower' if m in LOWER_BETTER else 'higher'}</td>"
                 f"<td class=l>{e(result.versions.get(m, ''))}</td></tr>")
    score = (f"<b>{result.score:.4f}</b>" if result.score is not None
             else f"not computed (needs {e(', '.join(result.score_missing))})")
    p.append(f"</table><p>NTIRE 2025 score = (1-LPIPS) + (1-DISTS) + CLIP-IQA + MANIQA + MUSIQ/100 + "
             f"max(0, (10-NIQE)/10): {score}</p>")

    if result.errors:
        p.append(f"<h2 class=bad>Skipped ({len(result.errors)})</h2><ul>")
        p += [f"<li><code>{e(f)}</code>: {e(msg)}</li>" for f, msg in result.errors]
        p.append("</ul>")

    p.append("<h2>Distributions</h2>")
    for m in metrics:
        if result.counts.get(m):
            p.append("<div>" + box_plot_svg([r.values.get(m, math.nan) for r in result.images], LABELS[m]) + "</div>")

    if showcase:
        assert rank is not None  # a showcase is ranked
        p.append(f"<h2>Best and worst by {e(LABELS[rank])}</h2>")
        for tag, r, crops in showcase:
            p.append(f"<h3>{e(tag)}: {e(r.key)} ({e(LABELS[rank])} {_fmt(r.values[rank])})</h3>"
                     f"<p>window {e(crops['window'])}, the region where SR differs most from HR</p><div class=crops>")
            for kind, caption in (("bicubic", "bicubic x4"), ("sr", "SR"), ("hr", "HR")):
                p.append(f"<figure><img src=\"{e(crops[kind])}\" alt=\"{e(caption)}\">"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
            p.append("</div>")

    p.append("<h2>Per image</h2><table><tr><th class=l>image</th><th>size</th>"
             + "".join(f"<th>{e(LABELS[m])}</th>" for m in metrics) + "<th class=l>notes</th></tr>")
    for r in result.images:
        p.append(f"<tr><td class=l>{e(r.key)}</td><td>{r.width}x{r.height}</td>"
                 + "".join(f"<td>{_fmt(r.values.get(m))}</td>" for m in metrics)
                 + f"<td class=l>{e('; '.join(r.notes))}</td></tr>")
    p.append("</table></body></html>\n")
    return "\n".join(p)
