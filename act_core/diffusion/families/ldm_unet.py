"""The LDM UNet layout (SD1.x, SD2.x, SDXL): diffusers ``UNet2DConditionModel`` names <->
ComfyUI ``UNetModel`` names."""

from __future__ import annotations

from typing import Iterable

from .names import NameTranslationError, split_prefix


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "dropout": "out_layers.2", "conv2": "out_layers.3",
           "conv_shortcut": "skip_connection"}
_EMBED = {"linear_1": "0", "act": "1", "linear_2": "2"}
# kind -> inner table (diffusers child -> ComfyUI child); None = identical names
_INNER = {"resnet": _RESNET, "embed": _EMBED, "down": {"conv": "op"}, "up": {"conv": "conv"},
          "attention": None, "leaf": {}}


class LdmUNet:
    """diffusers ``UNet2DConditionModel`` names <-> ComfyUI ``UNetModel`` names for the LDM layout.

    ``levels`` resolution levels with ``layers`` resnets per down level (``layers + 1`` per up
    level); attention on the down levels in ``down_attention`` and up levels in ``up_attention``.
    ComfyUI numbers blocks ``input_blocks.k.j`` / ``output_blocks.k.j`` where diffusers groups
    them per level (``L = layers``)::

        down_blocks.d.resnets.i       <-> input_blocks.(1+(L+1)d+i).0
        down_blocks.d.attentions.i    <-> input_blocks.(1+(L+1)d+i).1
        down_blocks.d.downsamplers.0  <-> input_blocks.((L+1)(d+1)).0     (.conv <-> .op)
        mid_block.resnets.0 / attentions.0 / resnets.1 <-> middle_block.0 / 1 / 2
        up_blocks.u.resnets.i         <-> output_blocks.((L+1)u+i).0
        up_blocks.u.attentions.i      <-> output_blocks.((L+1)u+i).1
        up_blocks.u.upsamplers.0      <-> output_blocks.((L+1)u+L).(2 with attention, else 1)
        conv_in <-> input_blocks.0.0;  conv_norm_out / conv_act / conv_out <-> out.0 / out.1 / out.2
        time_embedding.{linear_1,act,linear_2} <-> time_embed.{0,1,2}
        add_embedding.{linear_1,act,linear_2}  <-> label_emb.0.{0,1,2}   (SDXL)

    Inside a resnet: ``norm1<->in_layers.0``, ``conv1<->in_layers.2``, ``time_emb_proj<->emb_layers.1``,
    ``norm2<->out_layers.0``, ``dropout<->out_layers.2``, ``conv2<->out_layers.3``,
    ``conv_shortcut<->skip_connection``. Inside attention blocks (``Transformer2DModel`` <->
    ``SpatialTransformer``) the names are identical.
    """

    def __init__(self, levels: int, down_attention: Iterable[int], up_attention: Iterable[int], layers: int = 2):
        down_attention, up_attention = set(down_attention), set(up_attention)
        step = layers + 1
        rows = [("conv_in", "input_blocks.0.0", "leaf"),
                ("time_embedding", "time_embed", "embed"),
                ("add_embedding", "label_emb.0", "embed"),
                ("conv_norm_out", "out.0", "leaf"), ("conv_act", "out.1", "leaf"), ("conv_out", "out.2", "leaf"),
                ("mid_block.resnets.0", "middle_block.0", "resnet"),
                ("mid_block.attentions.0", "middle_block.1", "attention"),
                ("mid_block.resnets.1", "middle_block.2", "resnet")]
        for d in range(levels):
            for i in range(layers):
                rows.append((f"down_blocks.{d}.resnets.{i}", f"input_blocks.{1 + step * d + i}.0", "resnet"))
                if d in down_attention:
                    rows.append((f"down_blocks.{d}.attentions.{i}", f"input_blocks.{1 + step * d + i}.1", "attention"))
            if d < levels - 1:
                rows.append((f"down_blocks.{d}.downsamplers.0", f"input_blocks.{step * (d + 1)}.0", "down"))
        for u in range(levels):
            for i in range(step):
                rows.append((f"up_blocks.{u}.resnets.{i}", f"output_blocks.{step * u + i}.0", "resnet"))
                if u in up_attention:
                    rows.append((f"up_blocks.{u}.attentions.{i}", f"output_blocks.{step * u + i}.1", "attention"))
            if u < levels - 1:
                rows.append((f"up_blocks.{u}.upsamplers.0",
                             f"output_blocks.{step * u + layers}.{2 if u in up_attention else 1}", "up"))
        self.rows = rows
        self._d2c = {d: (c, k) for d, c, k in rows}
        self._c2d = {c: (d, k) for d, c, k in rows}

    @staticmethod
    def _inner(rest: str, kind: str, forward: bool, full: str) -> str:
        if not rest:
            return ""
        table = _INNER[kind]
        if table is None:
            return "." + rest
        if not forward:
            table = {v: k for k, v in table.items()}
        hit = split_prefix(rest, table)
        if hit is None:
            side = "ComfyUI" if forward else "diffusers"
            raise NameTranslationError(
                f"{full!r} has no {side} counterpart: below a {kind} block only {', '.join(sorted(table))} translate"
            )
        head, tail = hit
        return "." + table[head] + ("." + tail if tail else "")

    def to_comfy(self, local: str) -> str:
        """diffusers UNet name (no ``unet.`` prefix) -> ComfyUI ``UNetModel`` name (no root prefix)."""
        hit = split_prefix(local, self._d2c)
        if hit is None:
            raise NameTranslationError(
                f"diffusers UNet module {local!r} has no ComfyUI counterpart; translatable modules live under "
                "conv_in, time_embedding, add_embedding, down_blocks.D.{resnets,attentions,downsamplers}.I, "
                "mid_block.{resnets,attentions}.I, up_blocks.U.{resnets,attentions,upsamplers}.I, conv_norm_out, "
                "conv_act, conv_out"
            )
        head, rest = hit
        comfy, kind = self._d2c[head]
        return comfy + self._inner(rest, kind, True, local)

    def from_comfy(self, local: str) -> str:
        """ComfyUI ``UNetModel`` name (no root prefix) -> diffusers UNet name (no ``unet.`` prefix)."""
        hit = split_prefix(local, self._c2d)
        if hit is None:
            raise NameTranslationError(
                f"ComfyUI UNet module {local!r} has no diffusers counterpart; translatable modules are the blocks "
                "input_blocks.K.J, middle_block.K, output_blocks.K.J, time_embed, label_emb.0, out.K and their insides"
            )
        head, rest = hit
        diff, kind = self._c2d[head]
        return diff + self._inner(rest, kind, False, local)


__all__ = ["LdmUNet"]
