"""CLIP evaluation of steered images: zero-shot presence of a style/concept and CLIPScore.

Measures, per strength λ (as in the reference's ``calculate_clip_score``):

- ``zero_shot``: ``softmax([cos(img, "A picture of something."), cos(img, f"A picture of {c}.")])[1]``
  over RAW cosines (no logit scale), so values sit near 0.5; ``presence`` is the fraction of
  images with score > 0.5 (the paper's "fraction classified as style/concept").
- ``zero_shot_scaled``: the same softmax with CLIP's logit scale (≈100 for trained CLIP), a
  sharper probability.
- ``clip_similarity``: cosine between the image and the ORIGINAL prompt (the paper's ClipScore to
  the unconditional prompt), and ``clipscore`` = 100·max(cos, 0) (Hessel et al.).

Backends: transformers ``CLIPModel`` + ``CLIPImageProcessor`` (PIL path, no torchvision) from a
local folder (e.g. a download of openai/clip-vit-large-patch14), or open_clip if installed
(imported lazily; never required).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

NEUTRAL = "A picture of something."
TEMPLATE = "A picture of {}."


def _features(out) -> torch.Tensor:
    """transformers 4.x returns a tensor, 5.x an output object with ``pooler_output``."""
    f = out if torch.is_tensor(out) else getattr(out, "pooler_output", None)
    if f is None:
        f = out[0]
    return torch.nn.functional.normalize(f.float(), dim=-1)


class CLIPEvaluator:
    """CLIP embeddings for images and texts.

    Build from objects (``CLIPEvaluator(model, processor, tokenizer)``) or a local folder
    (:meth:`from_pretrained`). ``logit_scale`` is ``exp(model.logit_scale)``.
    """

    def __init__(self, model, processor, tokenizer, device: str = "cpu", batch_size: int = 16):
        self.model, self.processor, self.tokenizer = model.eval().to(device), processor, tokenizer
        self.device, self.batch_size = device, batch_size
        ls = getattr(model, "logit_scale", None)
        self.logit_scale = float(ls.detach().exp()) if isinstance(ls, torch.Tensor) else 100.0

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], device: Optional[str] = None, backend: str = "transformers"):
        """Load CLIP from a local folder (``backend="transformers"``) or an open_clip model name /
        checkpoint (``backend="open_clip"``, ``path`` = ``"ViT-H-14:/path/to/open_clip_pytorch_model.bin"``)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if backend == "open_clip":
            return OpenCLIPEvaluator.load(str(path), device)
        if backend != "transformers":
            raise ValueError(f"unknown CLIP backend {backend!r}: choose 'transformers' or 'open_clip'")
        p = Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"CLIP folder not found: {p} (a local folder with config.json, weights, "
                                    "tokenizer and preprocessor_config.json, e.g. openai/clip-vit-large-patch14)")
        from transformers import AutoTokenizer, CLIPModel

        try:
            from transformers import CLIPImageProcessorPil as _Proc  # no torchvision needed
        except ImportError:  # pragma: no cover - older transformers
            from transformers import CLIPImageProcessor as _Proc
        model = CLIPModel.from_pretrained(p, local_files_only=True)
        proc = _Proc.from_pretrained(p, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
        if len(tok) < 100:
            raise ValueError(f"the tokenizer in {p} has only {len(tok)} tokens: its vocabulary files are missing")
        return cls(model, proc, tok, device)

    @torch.no_grad()
    def image_features(self, images: Sequence[Any]) -> torch.Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.processor(images=list(images[i:i + self.batch_size]), return_tensors="pt").pixel_values
            out.append(_features(self.model.get_image_features(pixel_values=px.to(self.device))).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                 max_length=77, return_tensors="pt")
            f = self.model.get_text_features(input_ids=enc.input_ids.to(self.device),
                                             attention_mask=enc.attention_mask.to(self.device))
            out.append(_features(f).cpu())
        return torch.cat(out)

    def zero_shot(self, images: Sequence[Any], condition: str, image_features: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Per image: ``raw`` (softmax over raw cosines) and ``scaled`` (× logit scale) probability
        of ``"A picture of {condition}."`` against ``"A picture of something."``."""
        img = self.image_features(images) if image_features is None else image_features
        txt = self.text_features([NEUTRAL, TEMPLATE.format(condition)])
        cos = img @ txt.T  # (N, 2)
        return {"raw": cos.softmax(-1)[:, 1], "scaled": (cos * self.logit_scale).softmax(-1)[:, 1]}

    def prompt_similarity(self, images: Sequence[Any], prompts: Sequence[str],
                          image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cosine between image ``i`` and prompt ``i``."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts; give one prompt per image")
        img = self.image_features(images) if image_features is None else image_features
        return (img * self.text_features(prompts)).sum(-1)


class OpenCLIPEvaluator(CLIPEvaluator):  # pragma: no cover - open_clip is optional and never installed in tests
    """The same measures through open_clip (``pip install open-clip-torch``; needs torchvision)."""

    @classmethod
    def load(cls, spec: str, device: str):
        try:
            import open_clip
        except ImportError as e:
            raise ValueError("open_clip is not installed (it needs torchvision); use the transformers backend "
                             f"with a local CLIP folder instead ({e})") from None
        name, _, ckpt = spec.partition(":")
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=ckpt or None, device=device)
        self = cls.__new__(cls)
        self.model, self.device, self.batch_size = model.eval(), device, 16
        self.preprocess, self.tokenize = preprocess, open_clip.get_tokenizer(name)
        self.logit_scale = float(model.logit_scale.exp())
        return self

    @torch.no_grad()
    def image_features(self, images):
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1).cpu()

    @torch.no_grad()
    def text_features(self, texts):
        t = self.tokenize(list(texts)).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(t).float(), dim=-1).cpu()


def evaluate_images(evaluator: CLIPEvaluator, images_by_strength: Mapping[float, Sequence[Any]],
                    prompts: Sequence[str], condition: str) -> List[Dict[str, float]]:
    """One row per λ: mean zero-shot scores, presence fraction, CLIP similarity to the prompts."""
    rows = []
    for lam in sorted(images_by_strength):
        imgs = list(images_by_strength[lam])
        feats = evaluator.image_features(imgs)
        zs = evaluator.zero_shot(imgs, condition, feats)
        sim = evaluator.prompt_similarity(imgs, prompts, feats)
        rows.append({
            "strength": float(lam),
            "images": len(imgs),
            "zero_shot": float(zs["raw"].mean()),
            "presence": float((zs["raw"] > 0.5).float().mean()),
            "zero_shot_scaled": float(zs["scaled"].mean()),
            "clip_similarity": float(sim.mean()),
            "clipscore": float((100 * sim.clamp(min=0)).mean()),
        })
    return rows


COLUMNS = [("strength", "λ", "{:g}"), ("images", "images", "{:d}"), ("zero_shot", "0-shot (raw)", "{:.4f}"),
           ("presence", "presence", "{:.0%}"), ("zero_shot_scaled", "0-shot (scaled)", "{:.3f}"),
           ("clip_similarity", "CLIP sim. to prompt", "{:.4f}"), ("clipscore", "CLIPScore", "{:.2f}")]


def markdown_table(rows: Sequence[Mapping[str, float]], condition: Optional[str] = None) -> str:
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    body = ["| " + " | ".join(fmt.format(r[k]) for k, _, fmt in COLUMNS) + " |" for r in rows]
    title = [f"Condition: **{condition}** (0-shot = P(\"A picture of {condition}.\") vs \"{NEUTRAL}\")", ""] if condition else []
    return "\n".join(title + [head, sep] + body) + "\n"


def plot(rows: Sequence[Mapping[str, float]], path: Union[str, Path, None] = None, title: str = ""):
    """A line chart against λ: presence (0-shot > 0.5), the raw 0-shot score rescaled (2x − 0.5),
    and CLIP similarity relative to the first λ (÷ 1.2), all on 0..1. Returns the image; saves a
    PNG with the rows in its metadata when ``path`` is given."""
    from ..plotting import render

    xs = [r["strength"] for r in rows]
    base = rows[0]["clip_similarity"] or 1.0
    series = {
        "presence": (xs, [r["presence"] for r in rows]),
        "0-shot raw (x2-1 rescaled)": (xs, [2 * r["zero_shot"] - 0.5 for r in rows]),
        "CLIP sim / sim(first lambda)": (xs, [min(1.2, r["clip_similarity"] / base) / 1.2 for r in rows]),
    }
    img = render([{"title": title, "xlabel": "strength lambda", "series": series, "ylim": (0.0, 1.0)}], (640, 400))
    if path is not None:
        from .images import save_image

        save_image(img, path, {"rows": json.dumps(list(rows))})
    return img


def best_strength(rows: Sequence[Mapping[str, float]], task: str, keep: float = 0.8) -> Optional[float]:
    """The λ with the strongest effect (max presence for style, min for negation) among those that
    keep at least ``keep`` of the λ-first CLIP similarity; None if no row qualifies."""
    if not rows:
        return None
    base = rows[0]["clip_similarity"]
    ok = [r for r in rows if base <= 0 or r["clip_similarity"] >= keep * base] or [rows[0]]
    sign = -1 if task == "negation" else 1
    best = max(ok, key=lambda r: (sign * r["presence"], sign * r["zero_shot"]))
    return None if math.isnan(best["strength"]) else best["strength"]
