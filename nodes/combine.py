"""Combine maps node (the math is act_core.compose.combine_maps)."""

from __future__ import annotations

from act_core.compose import combine_maps

from .comfy_compat import TransportMapType, io

CATEGORY = "steering/act"
SLOTS = 4


class CombineMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        inputs = []
        for i in range(1, SLOTS + 1):
            inputs.append(TransportMapType.Input(f"map_{i}", optional=i > 1,
                                                 tooltip=f"Map {i}; applied after maps 1..{i - 1} on shared layers." if i > 1 else "The first map."))
            inputs.append(io.Float.Input(f"strength_{i}", default=1.0, min=-10.0, max=10.0, step=0.05,
                                         tooltip=f"Strength λ of map {i} inside the combination."))
        return io.Schema(
            node_id="ActCombineMaps",
            display_name="Combine transport maps (AcT)",
            category=CATEGORY,
            description=(
                "Combines up to 4 maps (e.g. a style and a concept negation) into one. Each map i is taken at its "
                "strength s_i: T_i(x) = x + s_i((ωx+β) - x). On layers several maps share, they are composed in map "
                "order (map 1 first: T_n∘…∘T_1), using map 1's support band; other layers are taken from the one map "
                "that has them (union). The result has strength 1 built in: apply it at λ = 1 (λ interpolates "
                "between no steering and the combination)."
            ),
            inputs=inputs,
            outputs=[TransportMapType.Output(display_name="transport_map", tooltip="The combined map.")],
        )

    @classmethod
    def execute(cls, map_1, strength_1, strength_2=1.0, strength_3=1.0, strength_4=1.0,
                map_2=None, map_3=None, map_4=None) -> io.NodeOutput:
        pairs = [(m, s) for m, s in ((map_1, strength_1), (map_2, strength_2), (map_3, strength_3), (map_4, strength_4))
                 if m is not None]
        return io.NodeOutput(combine_maps([m for m, _ in pairs], [s for _, s in pairs]))


NODES = [CombineMaps]
