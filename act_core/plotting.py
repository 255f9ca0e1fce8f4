"""Small line charts drawn with PIL (no matplotlib): λ sweeps in reports, evaluations and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Tuple

_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def render(panels: Sequence[Mapping], size: Tuple[int, int] = (420, 300), font_size: int = 0):
    """Line panels side by side as a PIL image (PIL only, no matplotlib).

    Each panel: ``{"title": str, "xlabel": str, "ylabel": str, "series": {label: (xs, ys)}}``,
    optionally ``"ylim": (lo, hi)`` to fix the y range (values are clipped to it), ``"ci": {label:
    (los, his)}`` (an interval per point, drawn as a whisker), ``"dashed": [label, ...]`` (e.g. a
    baseline drawn as a dashed line), ``"colors": {label: (r, g, b)}`` and ``"legend_at": (fx, fy)``
    (the legend's top-left corner as fractions of the plot area; default: the top right). ``font_size`` > 0 uses a
    scalable font of that pixel size (Pillow's built-in bitmap font otherwise).
    """
    from PIL import Image, ImageDraw, ImageFont

    def txt(v) -> str:  # PIL's built-in font is ASCII-only
        return str(v).replace("λ", "lambda").replace("—", "-").encode("ascii", "replace").decode()

    w, h = size
    img = Image.new("RGB", (w * len(panels), h), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size) if font_size > 0 else ImageFont.load_default()
    fs = font_size if font_size > 0 else 11  # line height of the text
    for k, panel in enumerate(panels):
        ox = k * w
        left, right, top, bottom = ox + 4 * fs + 8, ox + w - 12, 2 * fs + 4, h - 3 * fs - 7
        series = panel["series"]
        xs = [x for xv, _ in series.values() for x in xv]
        ys = [y for _, yv in series.values() for y in yv if y == y]
        if not xs or not ys:
            continue
        x0, x1 = min(xs), max(xs)
        if panel.get("ylim"):
            y0, y1 = panel["ylim"]
            series = {k: (xv, [min(y1, max(y0, y)) for y in yv]) for k, (xv, yv) in series.items()}
        else:
            y0, y1 = min(ys), max(ys)
            if y1 - y0 < 1e-9:
                y0, y1 = y0 - 0.5, y1 + 0.5
            pad = 0.05 * (y1 - y0)
            y0, y1 = y0 - pad, y1 + pad
        x1 = x1 if x1 > x0 else x0 + 1

        def px(x, y):
            return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

        draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
        for i in range(5):
            yv = y0 + (y1 - y0) * i / 4
            _, yy = px(x0, yv)
            draw.line([left, yy, right, yy], fill=(225, 225, 225))
            draw.text((ox + 4, yy - fs // 2 - 1), f"{yv:.3g}", fill=(0, 0, 0), font=font)
        for xv in sorted(set(xs)):
            xx, _ = px(xv, y0)
            draw.line([xx, bottom, xx, bottom + 3], fill=(0, 0, 0))
            draw.text((xx - fs * 0.7, bottom + 5), f"{xv:g}", fill=(0, 0, 0), font=font)
        draw.text((left, 4), txt(panel.get("title", "")), fill=(0, 0, 0), font=font)
        draw.text(((left + right) // 2 - 2 * fs, h - fs - 5), txt(panel.get("xlabel", "")), fill=(0, 0, 0), font=font)
        draw.text((left + 4, top + 2), txt(panel.get("ylabel", "")), fill=(90, 90, 90), font=font)
        width = (lambda t: draw.textlength(t, font=font)) if font_size > 0 else (lambda t: 6 * len(t))
        legend_x = max(left + 40, right - 12 - max(width(txt(f"-- {k}")) for k in series))
        legend_y = top + fs + 3
        if panel.get("legend_at"):
            fx, fy = panel["legend_at"]
            legend_x, legend_y = left + fx * (right - left), top + fy * (bottom - top)
        ci, dashed, colors = panel.get("ci", {}), set(panel.get("dashed", ())), panel.get("colors", {})
        for j, (label, (xv, yv)) in enumerate(series.items()):
            col = tuple(colors.get(label, _COLORS[j % len(_COLORS)]))
            pts = [px(x, y) for x, y in zip(xv, yv) if y == y]
            if label in dashed:
                for (a, b), (c, d) in zip(pts, pts[1:]):
                    n = max(1, int(((c - a) ** 2 + (d - b) ** 2) ** 0.5 // 8))
                    for i in range(0, n, 2):
                        draw.line([a + (c - a) * i / n, b + (d - b) * i / n, a + (c - a) * (i + 1) / n,
                                   b + (d - b) * (i + 1) / n], fill=col, width=2)
            elif len(pts) > 1:
                draw.line(pts, fill=col, width=2)
            if label in ci:
                for x, lo, hi in zip(xv, *ci[label]):
                    if lo == lo and hi == hi:
                        (a, b), (_, d) = px(x, lo), px(x, hi)
                        draw.line([a, b, a, d], fill=col, width=1)
                        draw.line([a - 3, b, a + 3, b], fill=col)
                        draw.line([a - 3, d, a + 3, d], fill=col)
            if label not in dashed:
                for (a, b) in pts:
                    draw.ellipse([a - 3, b - 3, a + 3, b + 3], fill=col)
            legend = f"{'- -' if label in dashed else '--'} {label}"
            draw.text((legend_x, legend_y + (fs + 2) * j), txt(legend), fill=col, font=font)
    return img


def line_plot(panels: Sequence[Mapping], path, size: Tuple[int, int] = (420, 300), font_size: int = 0) -> Path:
    """:func:`render` the panels and write the PNG atomically; returns the path."""
    from io import BytesIO

    from .files import atomic_write_bytes

    buf = BytesIO()
    render(panels, size, font_size).save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
