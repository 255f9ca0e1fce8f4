"""Write a diffusers SDXL or SD1.x pipeline as ONE original-layout checkpoint (A1111 / ComfyUI keys).

Key layout (what SDXL single files use): ``model.diffusion_model.*`` (UNet, LDM names:
``input_blocks.i.j``, ``middle_block.k``, ``output_blocks.i.j``, ``time_embed``, ``label_emb``, ``out``),
``first_stage_model.*`` (VAE, LDM names), ``conditioner.embedders.0.transformer.text_model.*``
(CLIP-L in transformers layout) and ``conditioner.embedders.1.model.*`` (OpenCLIP-G layout: fused
``attn.in_proj_*``, ``text_projection`` transposed). SD1.x files hold the same UNet and VAE
layouts and ``cond_stage_model.transformer.text_model.*`` (CLIP-L). Works for any
UNet2DConditionModel with the family's block types (any widths, layers per block); diffusers'
``from_single_file`` and ComfyUI read it back. The tests use it to write the tiny pipelines and the
miniature SDXL as single files. (SD2.x, SD3 and FLUX single files come from their original
releases or from ComfyUI's checkpoint saver.)
"""

from __future__ import annotations

def _unet_to_ldm(sd: dict, lpb: int, up_has_attn: set) -> dict:
    """diffusers UNet2DConditionModel keys -> original (A1111/ComfyUI) SDXL UNet keys."""
    import re

    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    res = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]

    def resnet(rest):
        for a, b in res:
            if rest.startswith(a + "."):
                return b + rest[len(a):]
        raise KeyError(rest)

    out = {}
    for k, v in sd.items():
        head, _, param = k.rpartition(".")
        if head in fixed:
            new = f"{fixed[head]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
            idx = int(m[1]) * (lpb + 1) + int(m[3]) + 1
            new = f"input_blocks.{idx}.0.{resnet(m[4])}" if m[2] == "resnets" else f"input_blocks.{idx}.1.{m[4]}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
            new = f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.*)", k):
            new = f"middle_block.{2 * int(m[1])}.{resnet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", k):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
            idx = int(m[1]) * (lpb + 1) + int(m[3])
            new = f"output_blocks.{idx}.0.{resnet(m[4])}" if m[2] == "resnets" else f"output_blocks.{idx}.1.{m[4]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
            b = int(m[1])
            new = f"output_blocks.{b * (lpb + 1) + lpb}.{2 if b in up_has_attn else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet key {k}")
        out["model.diffusion_model." + new] = v
    return out


def _vae_to_ldm(sd: dict, n_up: int) -> dict:
    import re

    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for k, v in sd.items():
        new = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n_up - 1 - int(m[1])}.block.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{n_up - 1 - int(m[1])}.upsample.", new)
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", new):
            new = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if m[3] == "weight" and v.ndim == 2:
                v = v[:, :, None, None]
        out["first_stage_model." + new] = v
    return out


def _openclip_to_ldm(sd: dict) -> dict:
    import re

    import torch as _t

    p = "conditioner.embedders.1.model."
    out, qkv = {}, {}
    table = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    sub = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
           "self_attn.out_proj": "attn.out_proj"}
    for k, v in sd.items():
        if k in table:
            out[p + table[k]] = v
        elif k == "text_projection.weight":
            out[p + "text_projection"] = v.T.contiguous()
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", k):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = v
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.*)\.(weight|bias)", k):
            out[f"{p}transformer.resblocks.{m[1]}.{sub[m[2]]}.{m[3]}"] = v
        else:
            raise KeyError(f"no OpenCLIP name for {k}")
    for (i, kind), d in qkv.items():
        out[f"{p}transformer.resblocks.{i}.attn.in_proj_{kind}"] = _t.cat([d["q"], d["k"], d["v"]], 0)
    return out


def save_single_file(pipe, path) -> None:
    """Write ``pipe`` (SDXL or SD1.x) as one original-layout checkpoint (what A1111/ComfyUI users download)."""
    from pathlib import Path

    from safetensors.torch import save

    from ..files import atomic_write_bytes
    from .families import for_pipeline

    family = for_pipeline(pipe).name
    if family not in ("sdxl", "sd15"):
        raise ValueError(f"single files are written for SDXL and SD1.x pipelines here, not {family}")
    unet = pipe.unet
    up_has_attn = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    sd = _unet_to_ldm(unet.state_dict(), unet.config.layers_per_block, up_has_attn)
    sd.update(_vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.up_block_types)))
    te = pipe.text_encoder.state_dict()
    prefix = "conditioner.embedders.0.transformer." if family == "sdxl" else "cond_stage_model.transformer."
    sd.update({prefix + (k if k.startswith("text_model.") else "text_model." + k): v
               for k, v in te.items() if not k.endswith("position_ids")})
    if family == "sdxl":
        sd.update(_openclip_to_ldm({k: v for k, v in pipe.text_encoder_2.state_dict().items()
                                    if not k.endswith("position_ids")}))
    atomic_write_bytes(Path(path), save({k: v.contiguous() for k, v in sd.items()}, metadata={"format": "pt"}))
