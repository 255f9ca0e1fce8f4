"""The CLI and demo defaults are the settings the miniature study favours (reports/miniworld/REPORT.md):
text-encoder layers for fit-style and fit-negation on SDXL; the demo's per-regime methods exist in the study's
catalogue (so the report's tables cover them)."""

import pytest

from act_core import cli


@pytest.mark.parametrize("family,expected", [("sdxl", "text_encoder_layers"), ("sd15", None)])
@pytest.mark.parametrize("command,extra", [("fit-style", ["--style", "watercolor"]),
                                           ("fit-negation", ["--concept", "pink_elephant"])])
def test_fit_commands_default_to_text_encoder_layers_on_sdxl(command, extra, family, expected, monkeypatch, tmp_path):
    """SDXL: the study's text-encoder layers; other families (not measured): their paper setting (None
    lets the family choose); an explicit --layers always wins."""
    import torch

    import act_core.diffusion.pipeline as D
    from act_core import fit_transport
    from act_core.mapfile import TransportMap

    class Pipe:
        act_defaults = {"family": family, "kind": "base", "steps": 4, "guidance": 0.0}

    seen = []

    def fit(pipe, name, **kw):
        seen.append(kw["layers"])
        m = TransportMap(meta={"architecture": "sdxl", "method": "linear", "procedure": "simultaneous"})
        m.add("text_encoder.encoder.layers.0", fit_transport(torch.randn(8, 4), torch.randn(8, 4) + 1))
        return m

    monkeypatch.setattr(D, "load_pipeline", lambda *a, **k: Pipe())
    monkeypatch.setattr(D, "fit_style_map", lambda pipe, style, tags=None, **kw: fit(pipe, style, **kw))
    monkeypatch.setattr(D, "fit_negation_map", fit)
    for layers in ([], ["--layers", "unet_norms"]):
        rc = cli.main([command, "--model", "m", *extra, *layers, "--out", str(tmp_path / "x.safetensors")])
        assert rc == 0
    assert seen == [expected, "unet_norms"]


def test_demo_defaults_are_methods_of_the_study():
    from act_core.cli.demo import MINI_DEFAULTS
    from act_core.diffusion.miniworld import study as S

    for (regime, task), d in MINI_DEFAULTS.items():
        names = {m.name for m in S.main_methods(task, regime)}
        assert d["method"] in names, (regime, task, d["method"])
        assert d["cite"].startswith(task.capitalize()), d["cite"]
