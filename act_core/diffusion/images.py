"""Images: PNG bytes with settings in their metadata, atomic saves, labelled grids (PIL, imported lazily)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ..files import atomic_write_bytes


def png_bytes(image, settings: Optional[Mapping[str, Any]] = None) -> bytes:
    """PNG bytes with ``settings`` as JSON in an ``act`` text chunk (and a readable ``parameters`` chunk)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if settings:
        info.add_text("act", json.dumps(dict(settings), ensure_ascii=False, default=str))
        info.add_text("parameters", ", ".join(f"{k}: {v}" for k, v in settings.items()))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_image(image, path: Union[str, Path], settings: Optional[Mapping[str, Any]] = None) -> Path:
    """Save ``image`` as PNG atomically, with ``settings`` in its metadata (read back with
    :func:`read_image_settings`)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"images are saved as PNG (with settings in the metadata); got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png_bytes(image, settings))
    return path


def read_image_settings(path: Union[str, Path]) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        text = im.text.get("act") if hasattr(im, "text") else None
    return json.loads(text) if text else {}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pillow < 10.1
        return ImageFont.load_default()


def label_grid(images: Sequence[Sequence[Any]], col_labels: Sequence[str], row_labels: Sequence[str]):
    """Paste ``images[row][col]`` into one labelled PIL image (column labels on top, row labels
    on the left, wrapped)."""
    from PIL import Image, ImageDraw

    rows, cols = len(images), len(images[0])
    w, h = images[0][0].size
    fs = max(10, min(w, h) // 12)
    font = _font(fs)
    left = max(120, w)
    top = fs * 2 + 8
    grid = Image.new("RGB", (left + cols * w, top + rows * h), "white")
    draw = ImageDraw.Draw(grid)
    for c, lab in enumerate(col_labels):
        draw.text((left + c * w + 4, 4), str(lab), fill="black", font=font)
    chars = max(8, int(left / (fs * 0.6)))
    for r, lab in enumerate(row_labels):
        words, lines, line = str(lab).split(), [], ""
        for wd in words:
            if len(line) + len(wd) + 1 > chars:
                lines.append(line)
                line = wd
            else:
                line = f"{line} {wd}".strip()
        lines.append(line)
        max_lines = max(1, (h - 8) // (fs + 2))
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [lines[max_lines - 1][: chars - 1] + "…"]
        for i, ln in enumerate(lines):
            draw.text((4, top + r * h + 4 + i * (fs + 2)), ln, fill="black", font=font)
        for c in range(cols):
            grid.paste(images[r][c].convert("RGB"), (left + c * w, top + r * h))
    return grid
