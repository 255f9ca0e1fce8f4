"""Presence-against-content charts with confidence intervals (PIL only).

One panel per target: x = content kept, y = presence (of the style, or of the negated shape),
both in [0, 1]. A method is a polyline through its knob values (λ, scale, …) in order, each
point with 95% interval whiskers on both axes and its knob value written beside it; methods
without a knob are single markers. The goal region is shaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Tuple

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207), (188, 189, 34), (80, 80, 80), (0, 0, 128), (128, 0, 0),
           (0, 128, 128), (255, 0, 255), (128, 128, 0), (0, 200, 100), (100, 0, 200), (200, 100, 0),
           (70, 130, 255), (255, 90, 120)]

# a point: (content, presence, (content_lo, content_hi), (presence_lo, presence_hi), label)
Point = Tuple[float, float, Tuple[float, float], Tuple[float, float], str]


def _ascii(v) -> str:
    for a, b in (("λ", "lambda"), ("—", "-"), ("…", "..."), ("α", "alpha"), ("τ", "tau"), ("→", "->"), ("≥", ">="),
                 ("≤", "<=")):
        v = str(v).replace(a, b)
    return v.encode("ascii", "replace").decode()


def render(panels: Sequence[Mapping], size: Tuple[int, int] = (460, 460), legend_width: int = 330):
    """``panels``: ``{"title", "goal": (content_min, presence_min, presence_max), "series": {name:
    [Point, ...]}}``; the legend (shared, from the first panel's series names) is on the right."""
    from PIL import Image, ImageDraw, ImageFont

    w, h = size
    names = []
    for p in panels:
        for n in p["series"]:
            if n not in names:
                names.append(n)
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    img = Image.new("RGB", (w * len(panels) + legend_width, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for k, panel in enumerate(panels):
        ox = k * w
        left, right, top, bottom = ox + 44, ox + w - 14, 24, h - 36

        def px(x, y):
            return left + x * (right - left), bottom - y * (bottom - top)

        gc, gp_lo, gp_hi = panel.get("goal", (None, None, None))
        if gc is not None:
            a, b = px(gc, gp_hi), px(1.0, gp_lo)
            d.rectangle([a[0], a[1], b[0], b[1]], fill=(226, 244, 226))
        d.rectangle([left, top, right, bottom], outline=(0, 0, 0))
        for i in range(6):
            v = i / 5
            x, _ = px(v, 0)
            _, y = px(0, v)
            d.line([left, y, right, y], fill=(232, 232, 232))
            d.line([x, top, x, bottom], fill=(232, 232, 232))
            d.text((ox + 14, y - 6), f"{v:.1f}", fill=(0, 0, 0), font=font)
            d.text((x - 8, bottom + 4), f"{v:.1f}", fill=(0, 0, 0), font=font)
        d.text((left, 6), _ascii(panel.get("title", "")), fill=(0, 0, 0), font=font)
        d.text(((left + right) // 2 - 40, h - 16), "content kept", fill=(0, 0, 0), font=font)
        d.text((left + 4, top + 2), _ascii(panel.get("ylabel", "presence")), fill=(90, 90, 90), font=font)
        for name, pts in panel["series"].items():
            col = colour[name]
            xy = [px(c, p) for c, p, *_ in pts]
            if len(xy) > 1:
                d.line(xy, fill=col, width=2)
            for (c, p, (c0, c1), (p0, p1), lab), (x, y) in zip(pts, xy):
                a0, _ = px(c0, p)
                a1, _ = px(c1, p)
                _, b0 = px(c, p0)
                _, b1 = px(c, p1)
                d.line([a0, y, a1, y], fill=col, width=1)
                d.line([x, b0, x, b1], fill=col, width=1)
                r = 4 if len(pts) > 1 else 6
                if len(pts) > 1:
                    d.ellipse([x - r, y - r, x + r, y + r], fill=col)
                else:
                    d.rectangle([x - r, y - r, x + r, y + r], fill=col)
                if lab:
                    d.text((x + 5, y - 11), _ascii(lab), fill=col, font=font)
    lx = w * len(panels) + 8
    for i, n in enumerate(names):
        y = 28 + 14 * i
        d.rectangle([lx, y + 2, lx + 10, y + 10], fill=colour[n])
        d.text((lx + 16, y), _ascii(n)[:52], fill=(0, 0, 0), font=font)
    return img


def tradeoff_plot(panels: Sequence[Mapping], path, size: Tuple[int, int] = (460, 460)) -> Path:
    """:func:`render` and write the PNG atomically."""
    from io import BytesIO

    from ...files import atomic_write_bytes

    buf = BytesIO()
    render(panels, size).save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
