"""Judges of the procedural world's attributes on (generated) 32×32 images.

Two kinds, both deterministic:

- **Measurements** (no training, :func:`measure`, :func:`color_fractions`): per palette colour the
  fraction of saturated pixels whose hue falls in that colour's band (HSV, saturation > 0.3,
  value > 0.3), in the whole image and in each half; luminance; edge density (fraction of pixels
  whose gradient magnitude exceeds 40/255); colour fill (saturated pixels / their bounding box);
  blockiness (how much more alike pixels are inside aligned 2×2 blocks than across them).
- **A small CNN** (:class:`JudgeNet`, ~0.2 M parameters) trained on rendered scenes (half of them
  passed through the miniature model's VAE, so VAE-style blur does not fool it) with four heads:
  style (5-way softmax), shape presence (3 sigmoids), colour presence (4 sigmoids), background
  (2-way). ``bench/train_miniworld.py`` trains it; held-out accuracies are stored in the
  weights' metadata (:func:`Judges.accuracy`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import world as W

HUES = {"red": ((0, 20), (330, 360)), "yellow": ((35, 75),), "green": ((80, 170),), "blue": ((190, 265),)}
COLOR_MIN_FRACTION = 0.008  # of the image (about 8 pixels of 1024)


def as_array(images) -> np.ndarray:
    """PIL images / float arrays in [0,1] / uint8 arrays -> uint8 (N, 32, 32, 3)."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:
        return images
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB") if hasattr(im, "convert") else im)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
        if a.shape[:2] != (W.SIZE, W.SIZE):
            from PIL import Image

            a = np.asarray(Image.fromarray(a).resize((W.SIZE, W.SIZE), Image.BICUBIC))
        out.append(a)
    return np.stack(out)


def _hsv(x: np.ndarray):
    x = x.astype(np.float32) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    d = mx - mn
    s = np.where(mx > 0, d / np.maximum(mx, 1e-6), 0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    dd = np.maximum(d, 1e-6)
    h = np.where(mx == r, ((g - b) / dd) % 6, np.where(mx == g, (b - r) / dd + 2, (r - g) / dd + 4)) * 60
    return h, s, mx


def color_masks(images) -> Dict[str, np.ndarray]:
    """{colour: bool (N, 32, 32)} of pixels judged to be that palette colour."""
    h, s, v = _hsv(as_array(images))
    sat = (s > 0.3) & (v > 0.3)
    return {c: sat & np.any([(h >= lo) & (h < hi) for lo, hi in bands], axis=0) for c, bands in HUES.items()}


def color_fractions(images, region: str = "all") -> np.ndarray:
    """(N, 4) fraction of pixels of each colour (order :data:`world.COLOR_NAMES`) in ``region``
    (``all`` | ``left`` | ``right``)."""
    m = color_masks(images)
    sl = {"all": slice(None), "left": slice(0, W.SIZE // 2), "right": slice(W.SIZE // 2, None)}[region]
    return np.stack([m[c][:, :, sl].mean((1, 2)) for c in W.COLOR_NAMES], 1)


def colors_present(images, region: str = "all", min_fraction: float = COLOR_MIN_FRACTION) -> np.ndarray:
    """(N, 4) bool: a colour covers at least ``min_fraction`` of the region."""
    return color_fractions(images, region) >= min_fraction


def measure(images) -> Dict[str, np.ndarray]:
    """Deterministic style measurements, each (N,)."""
    x = as_array(images).astype(np.float32)
    lum = x @ np.array([0.299, 0.587, 0.114], np.float32)
    gx = np.abs(np.diff(lum, axis=2))[:, :-1, :]
    gy = np.abs(np.diff(lum, axis=1))[:, :, :-1]
    edges = (np.sqrt(gx ** 2 + gy ** 2) > 40).mean((1, 2))
    sat = np.any(list(color_masks(images).values()), axis=0)
    fill = np.zeros(len(x), np.float32)
    for i, m in enumerate(sat):
        ys, xs = np.nonzero(m)
        if len(ys):
            fill[i] = m.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    d_in = np.abs(x[:, :, 0::2] - x[:, :, 1::2]).mean((1, 2, 3))  # pairs inside aligned 2-px blocks
    d_across = np.abs(x[:, :, 1:-1:2] - x[:, :, 2::2]).mean((1, 2, 3))  # pairs across block borders
    blockiness = (d_across - d_in) / (d_across + d_in + 1e-6)
    return {"luminance": lum.mean((1, 2)) / 255, "edge_density": edges, "color_fill": fill, "blockiness": blockiness}


# -- the trained classifier ----------------------------------------------------------------------


class JudgeNet(torch.nn.Module):
    """(N,3,32,32) in [-1,1] -> logits {style (N,5), shape (N,3), color (N,4), background (N,2)}."""

    HEADS = {"style": len(W.STYLES), "shape": len(W.SHAPES), "color": len(W.COLOR_NAMES), "background": 2}

    def __init__(self, width: int = 32):
        super().__init__()
        c = width
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, c, 3, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(c, c, 3, padding=1, stride=2), torch.nn.GELU(),
            torch.nn.Conv2d(c, 2 * c, 3, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(2 * c, 2 * c, 3, padding=1, stride=2), torch.nn.GELU(),
            torch.nn.Conv2d(2 * c, 2 * c, 3, padding=1, stride=2), torch.nn.GELU(),
            torch.nn.Flatten(), torch.nn.Linear(2 * c * 16, 128), torch.nn.GELU(),
        )
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(128, n) for k, n in self.HEADS.items()})

    def forward(self, x):
        h = self.body(x)
        return {k: head(h) for k, head in self.heads.items()}


def _targets(scenes: Sequence[W.Scene]) -> Dict[str, torch.Tensor]:
    style = torch.tensor([W.STYLES.index(s.style) for s in scenes])
    shape = torch.tensor([[float(k in s.shapes()) for k in W.SHAPES] for s in scenes])
    color = torch.tensor([[float(k in [o.color for o in s.objects]) for k in W.COLOR_NAMES] for s in scenes])
    bg = torch.tensor([W.BACKGROUNDS.index(s.background) for s in scenes])
    return {"style": style, "shape": shape, "color": color, "background": bg}


def _to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(as_array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def vae_roundtrip(vae, images: np.ndarray, batch: int = 256) -> np.ndarray:
    x = _to_input(images)
    outs = []
    for i in range(0, len(x), batch):
        z = vae.encode(x[i:i + batch].to(vae.dtype)).latent_dist.mean
        outs.append(vae.decode(z).sample.float())
    y = torch.cat(outs).clamp(-1, 1)
    return ((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _data(n: int, seed: int, vae=None):
    images, _, scenes = W.dataset(n, seed=seed, p_none=0.2)
    if vae is not None:
        half = n // 2
        images = np.concatenate([images[:half], vae_roundtrip(vae, images[half:])])
    return images, scenes


def evaluate_net(net: JudgeNet, images, scenes) -> Dict[str, float]:
    """Held-out accuracy per head (shape/colour: per-label accuracy and all-labels-right rate)."""
    p = predict_logits(net, images)
    t = _targets(scenes)
    out = {"style": float((p["style"].argmax(1) == t["style"]).float().mean()),
           "background": float((p["background"].argmax(1) == t["background"]).float().mean())}
    for k in ("shape", "color"):
        pred = p[k] > 0
        out[k + "_label"] = float((pred == t[k].bool()).float().mean())
        out[k + "_set"] = float((pred == t[k].bool()).all(1).float().mean())
    return out


@torch.no_grad()
def predict_logits(net: JudgeNet, images, batch: int = 512) -> Dict[str, torch.Tensor]:
    x = _to_input(images)
    outs = [net(x[i:i + batch]) for i in range(0, len(x), batch)]
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]} if outs else {}


def train_net(steps: int = 3500, batch: int = 64, seed: int = 0, vae=None, log: Callable[[str], None] = print,
              n_train: int = 12000, n_test: int = 2000):
    torch.manual_seed(seed)
    net = JudgeNet()
    images, scenes = _data(n_train, seed + 500, vae)
    x, t = _to_input(images), _targets(scenes)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for s in range(steps):
        for gr in opt.param_groups:
            gr["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * s / steps))
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = x[idx] + 0.03 * torch.randn(x[idx].shape, generator=g)
        out = net(xb)
        loss = (F.cross_entropy(out["style"], t["style"][idx]) + F.cross_entropy(out["background"], t["background"][idx])
                + F.binary_cross_entropy_with_logits(out["shape"], t["shape"][idx])
                + F.binary_cross_entropy_with_logits(out["color"], t["color"][idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (s + 1) % 250 == 0:
            log(f"[judges] step {s + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    net.eval()
    test_images, test_scenes = _data(n_test, seed + 900, vae)
    acc = evaluate_net(net, test_images, test_scenes)
    raw_imgs, _, raw_scenes = W.dataset(n_test, seed=seed + 901, p_none=0.2)
    acc_raw = evaluate_net(net, raw_imgs, raw_scenes)
    col = colors_present(raw_imgs)
    truth = _targets(raw_scenes)["color"].numpy().astype(bool)
    acc_hist = {"color_label": float((col == truth).mean()), "color_set": float((col == truth).all(1).mean())}
    return net, {"heldout_mixed": acc, "heldout_raw": acc_raw, "color_histogram_raw": acc_hist}


def train_and_save(path: Union[str, Path], vae=None, steps: int = 3500, seed: int = 0, log=print) -> dict:
    from ...files import atomic_write_bytes

    net, acc = train_net(steps=steps, seed=seed, vae=vae, log=log)
    log(f"[judges] held-out accuracy: {json.dumps(acc)}")
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in net.state_dict().items()},
                metadata={"accuracy": json.dumps(acc), "steps": str(steps), "seed": str(seed)})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), data)
    return acc


class Judges:
    """The trained CNN plus the measurements; ``Judges.load()`` reads the shipped weights."""

    def __init__(self, net: JudgeNet, accuracy: Optional[dict] = None):
        self.net, self.accuracy = net.eval(), accuracy or {}

    @classmethod
    def load(cls, path: Union[str, Path, None] = None) -> "Judges":
        from safetensors import safe_open
        from safetensors.torch import load_file

        from . import JUDGES

        path = Path(path) if path else JUDGES
        if not path.exists():
            raise FileNotFoundError(f"no judge weights at {path}: run `python bench/train_miniworld.py --stages judges`")
        net = JudgeNet()
        net.load_state_dict(load_file(str(path)))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return cls(net, json.loads(meta.get("accuracy", "{}")))

    def judge(self, images) -> Dict[str, np.ndarray]:
        """Per image: ``style`` (name), ``style_prob`` (N,5), ``shapes`` (N,3 bool), ``colors``
        (N,4 bool, from the histogram), ``colors_net`` (N,4 bool), ``background`` and the measurements."""
        arr = as_array(images)
        p = predict_logits(self.net, arr)
        out = {"style": np.array([W.STYLES[i] for i in p["style"].argmax(1).tolist()]),
               "style_prob": p["style"].softmax(1).numpy(), "shapes": (p["shape"] > 0).numpy(),
               "colors_net": (p["color"] > 0).numpy(), "colors": colors_present(arr),
               "background": np.array([W.BACKGROUNDS[i] for i in p["background"].argmax(1).tolist()])}
        out.update(measure(arr))
        return out
