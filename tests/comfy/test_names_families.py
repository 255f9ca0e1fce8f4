"""Every family's canonical <-> ComfyUI names against ComfyUI's own real-size module trees
(built on the meta device) and ComfyUI's own diffusers key maps (``comfy.utils.*_to_diffusers``,
what ComfyUI uses to load diffusers weights): every module both sides own parameters for
translates to the module ComfyUI maps its parameters to, in both directions, with equal shapes.
"""

import re

import pytest
import torch

from act_core.diffusion import families
from act_core.diffusion.families import NameTranslationError, flux, sd3, sd15

pytestmark = pytest.mark.comfy


def _owners(module):
    return {n: {k: tuple(p.shape) for k, p in m.named_parameters(recurse=False)}
            for n, m in module.named_modules() if n and list(m.parameters(recurse=False))}


def _diffusers(kind):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    with torch.device("meta"):
        if kind == "sd15":
            return UNet2DConditionModel(**sd15.SD15_UNET_CONFIG)
        if kind == "sd2":
            return UNet2DConditionModel(**sd15.SD2_UNET_CONFIG)
        if kind == "sd3":
            return SD3Transformer2DModel(**sd3.SD35_LARGE_CONFIG)
        return FluxTransformer2DModel(**flux.FLUX1_CONFIG)


def _comfy(kind, diff):
    """(ComfyUI denoiser on the meta device, ComfyUI's diffusers -> ComfyUI key map) for ``diff``."""
    import comfy.model_detection as md
    import comfy.ops
    import comfy.utils

    ops = comfy.ops.disable_weight_init
    if kind in ("sd15", "sd2"):
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        cfg = md.unet_config_from_diffusers_unet(diff.state_dict())
        cfg = {"num_heads": -1, "num_head_channels": -1, **cfg}
        return UNetModel(**cfg, device="meta", operations=ops), comfy.utils.unet_to_diffusers(cfg)
    sd = md.convert_diffusers_mmdit(diff.state_dict(), "")
    cfg = md.detect_unet_config(sd, "")
    if kind == "sd3":
        from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

        model = OpenAISignatureMMDITWrapper(**cfg, device="meta", operations=ops)
        return model, comfy.utils.mmdit_to_diffusers(cfg)
    from comfy.ldm.flux.model import Flux

    return Flux(**cfg, device="meta", operations=ops), comfy.utils.flux_to_diffusers(cfg)


# diffusers modules whose parameters ComfyUI keeps fused, re-laid out or in another order:
# no counterpart with the same output (see the family modules' docstrings)
NO_COUNTERPART = {
    "sd3": r"transformer_blocks\.\d+\.(attn2?\.(to_[qkv]|add_[qkv]_proj|norm_(added_)?[qk])|norm1_context\.linear)"
           r"|norm_out\.linear|pos_embed",
    "flux": r"(single_)?transformer_blocks\.\d+\.(attn\.(to_[qkv]|add_[qkv]_proj|norm_(added_)?[qk])|proj_mlp)|norm_out\.linear",
    "sd15": r"$^", "sd2": r"$^",
}


@pytest.mark.parametrize("kind", ["sd15", "sd2", "sd3", "flux"])
def test_denoiser_names_match_comfyui_key_maps_and_shapes(comfy_env, kind):
    fam = families.get(kind)
    diff = _diffusers(kind)
    comfy_model, key_map = _comfy(kind, diff)
    assert sum(p.numel() for p in comfy_model.parameters()) == sum(p.numel() for p in diff.parameters())
    d_owners, c_owners = _owners(diff), _owners(comfy_model)
    pfx = fam.denoiser + "."
    checked = set()
    for dkey, ckey in key_map.items():
        if not isinstance(ckey, str) or dkey.rpartition(".")[0] not in d_owners:
            continue  # sliced or converted parameters (fused qkv, swapped halves)
        d_owner, c_owner = dkey.rpartition(".")[0], ckey.rpartition(".")[0]
        if re.fullmatch(NO_COUNTERPART[kind], d_owner):
            continue  # e.g. FLUX's per-head q/k norms: same weights, another output layout
        assert fam.to_comfy(pfx + d_owner) == f"diffusion_model.{c_owner}", (d_owner, c_owner)
        assert fam.from_comfy(f"diffusion_model.{c_owner}") == pfx + d_owner
        assert c_owners[c_owner] == d_owners[d_owner]
        checked.add(d_owner)
    # every diffusers parameter owner is either checked against ComfyUI's map or documented as without counterpart
    rest = [n for n in d_owners if n not in checked and not re.fullmatch(NO_COUNTERPART[kind], n)]
    assert not rest, rest[:5]
    for n in d_owners:
        if re.fullmatch(NO_COUNTERPART[kind], n):
            with pytest.raises(NameTranslationError):
                fam.to_comfy(pfx + n)
    # and back: every ComfyUI parameter owner that has a canonical name is one of those
    back = 0
    for c_owner in c_owners:
        canonical = fam.try_from_comfy(f"diffusion_model.{c_owner}")
        if canonical is not None:
            assert canonical[len(pfx):] in checked, (c_owner, canonical)
            back += 1
    assert back == len(checked) > 100


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_stream_blocks_on_comfyui_trees(comfy_env, kind):
    fam = families.get(kind)
    comfy_model, _ = _comfy(kind, _diffusers(kind))
    root = torch.nn.Module()  # as MODEL.model holds the denoiser
    root.add_module("diffusion_model", comfy_model)
    names = fam.comfy_names(root)
    if kind == "flux":
        assert names["transformer.transformer_blocks.18.img"][:2] == ("diffusion_model.double_blocks.18", 0)
        assert names["transformer.transformer_blocks.18.txt"][:2] == ("diffusion_model.double_blocks.18", 1)
        assert names["transformer.single_transformer_blocks.37"][:2] == ("diffusion_model.single_blocks.37", None)
        assert "transformer.transformer_blocks.0" not in names
        assert sum(n.endswith((".img", ".txt")) for n in names) == 38
    else:
        assert names["transformer.transformer_blocks.0.txt"][:2] == ("diffusion_model.joint_blocks.0", 0)
        assert names["transformer.transformer_blocks.37.img"][:2] == ("diffusion_model.joint_blocks.37", 1)
        assert "transformer.transformer_blocks.37.txt" not in names  # the last block has no text output
    # the canonical names of ComfyUI's tree equal those of the diffusers tree (translatable modules)
    diff = _diffusers(kind)
    d_names = [n for n in fam.canonical_names(type("P", (), {"transformer": diff})()) if _translates(fam, n)]
    assert len(d_names) > 100 and set(d_names) <= set(names)


def _translates(fam, n):
    try:
        fam.comfy_site(n)
        return True
    except NameTranslationError:
        return False


def _hf_clip(hidden, layers, heads, inter, proj, with_projection):
    import transformers

    cfg = transformers.CLIPTextConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                      intermediate_size=inter, projection_dim=proj, vocab_size=49408,
                                      max_position_embeddings=77)
    with torch.device("meta"):
        cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
        return cls(cfg)


def _hf_params(model):
    inner = getattr(model, "text_model", model)
    out = dict(_owners(inner))
    if inner is not model and hasattr(model, "text_projection"):
        out["text_projection"] = {k: tuple(p.shape) for k, p in model.text_projection.named_parameters()}
    return out


def test_text_encoders_t5_clip_h_and_projected_clip_l(comfy_env):
    """SD3's text encoders (CLIP-L with projection, OpenCLIP-G, T5-XXL), SD2's OpenCLIP-H and
    FLUX's T5 against ComfyUI's own encoder modules, both directions, shapes equal."""
    import json
    from pathlib import Path

    import comfy.ops
    import comfy.text_encoders.sd2_clip
    import comfy.text_encoders.sd3_clip
    import comfy.text_encoders.t5
    import transformers

    with torch.device("meta"):
        sd3_clip = comfy.text_encoders.sd3_clip.SD3ClipModel(device="meta")
        sd2_clip = comfy.text_encoders.sd2_clip.SD2ClipModel(device="meta")
    t5_cfg = json.loads((Path(comfy.text_encoders.t5.__file__).parent / "t5_config_xxl.json").read_text())
    with torch.device("meta"):
        hf_t5 = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"))
    assert t5_cfg["d_model"] == 4096
    cases = [
        (sd3.FAMILY, "text_encoder", _hf_clip(768, 12, 12, 3072, 768, True), sd3_clip, "clip_l."),
        (sd3.FAMILY, "text_encoder_2", _hf_clip(1280, 32, 20, 5120, 1280, True), sd3_clip, "clip_g."),
        (sd15.SD2, "text_encoder", _hf_clip(1024, 24, 16, 4096, 1024, False), sd2_clip, "clip_h."),
    ]
    for fam, canon, hf, comfy_clip, enc in cases:
        comfy_params = _owners(comfy_clip)
        hf_params = _hf_params(hf)
        for name, params in hf_params.items():
            local = fam.to_comfy(f"{canon}.{name}")
            assert local.startswith(enc) and comfy_params.get(local) == params, (fam.name, name, local)
            assert fam.from_comfy(local) == f"{canon}.{name}"
        back = [l for l in comfy_params if l.startswith(enc) and fam.try_from_comfy(l) is not None]
        assert len(back) == len(hf_params) > 12 * 6, (fam.name, canon)
    # T5-XXL: SD3's text_encoder_3 and FLUX's text_encoder_2 are ComfyUI's t5xxl
    comfy_t5 = _owners(sd3_clip.t5xxl)
    hf_params = _owners(hf_t5)
    checked = 0
    for fam, canon in ((sd3.FAMILY, "text_encoder_3"), (flux.FAMILY, "text_encoder_2")):
        for name, params in hf_params.items():
            if name == "encoder.embed_tokens":  # tied to `shared` in transformers; ComfyUI has only `shared`
                with pytest.raises(NameTranslationError):
                    fam.to_comfy(f"{canon}.{name}")
                continue
            local = fam.to_comfy(f"{canon}.{name}")
            assert comfy_t5.get("transformer." + local[len("t5xxl.transformer."):]) == params, (name, local)
            assert fam.from_comfy(local) == f"{canon}.{name}"
            checked += 1
    assert checked == 2 * (len(hf_params) - 1) and checked > 2 * 24 * 7
    for bad in ("text_encoder_2.encoder.dropout", "text_encoder_2.encoder.block.0.layer.1.DenseReluDense.act",
                "text_encoder_2.decoder.block.0"):
        with pytest.raises(NameTranslationError):
            flux.FAMILY.to_comfy(bad)


def test_detection_from_comfyui_classes(comfy_env, pack):
    import comfy.model_patcher
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models as sm
    import comfy.text_encoders.flux
    import comfy.text_encoders.pixart_t5
    import comfy.text_encoders.sd2_clip
    import comfy.text_encoders.sd3_clip
    from act_steering_pack.nodes import comfy_compat as cc

    expect = {sm.SD15: "sd15", sm.SD20: "sd2", sm.SDXL: "sdxl", sm.SSD1B: "sdxl", sm.SD3: "sd3", sm.Flux: "flux",
              sm.FluxSchnell: "flux", sm.KOALA_700M: None, sm.Flux2: None, sm.SDXLRefiner: None, sm.WAN21_T2V: None,
              sm.Lumina2: None, sm.Chroma: None, sm.HunyuanVideo: None}
    for cls, name in expect.items():
        model = type("M", (), {"model": type("B", (), {"model_config": cls.__new__(cls)})()})()
        fam = families.for_comfy_model(cc.stock_model_class(model))
        assert (fam.name if fam else None) == name, cls.__name__
    clips = {comfy.sd1_clip.SD1ClipModel: "sd15", comfy.text_encoders.sd2_clip.SD2ClipModel: "sd2",
             comfy.sdxl_clip.SDXLClipModel: "sdxl", comfy.text_encoders.sd3_clip.sd3_clip(): "sd3",
             comfy.text_encoders.flux.flux_clip(): "flux", comfy.text_encoders.pixart_t5.pixart_te(): None}
    for cls, name in clips.items():
        sub = type("PackSubclass", (cls,), {"__module__": "some_pack"})  # a custom pack's subclass
        clip = type("C", (), {"cond_stage_model": sub.__new__(sub)})()
        fam = families.for_comfy_clip(cc.stock_clip_class(clip))
        assert (fam.name if fam else None) == name, cls.__name__
