"""The CLI and demo defaults are the settings the miniature study favours (reports/miniworld/REPORT.md):
text-encoder layers for fit-style and fit-negation; the demo's per-regime methods exist in the study's
catalogue (so the report's tables cover them)."""

import pytest

from act_core import cli


@pytest.mark.parametrize("command,extra", [("fit-style", ["--style", "watercolor"]),
                                           ("fit-negation", ["--concept", "pink_elephant"])])
def test_fit_commands_default_to_text_encoder_layers(command, extra):
    args = cli.build_parser().parse_args([command, "--model", "m", *extra, "--out", "x.safetensors"])
    assert args.layers == "text_encoder_layers"
    args = cli.build_parser().parse_args([command, "--model", "m", *extra, "--layers", "unet_norms",
                                          "--out", "x.safetensors"])
    assert args.layers == "unet_norms"


def test_demo_defaults_are_methods_of_the_study():
    from act_core.cli.demo import MINI_DEFAULTS
    from act_core.diffusion.miniworld import study as S

    for (regime, task), d in MINI_DEFAULTS.items():
        names = {m.name for m in S.main_methods(task, regime)}
        assert d["method"] in names, (regime, task, d["method"])
        assert d["cite"].startswith(task.capitalize()), d["cite"]
