"""Reliability of the ``act-steer`` CLI (issue 6): every subcommand answers bad input with
``act-steer CMD: error: …`` naming the input and the fix (exit 2, no traceback); a disk-full,
permission error or Ctrl-C while saving a map keeps the existing file and leaves no partial file.

The model-loading commands run on a monkeypatched ``load_sdxl`` (a tiny in-memory pipeline) so
the tests exercise the CLI's own checks and save path in a few seconds.
"""

import errno
import os

import pytest
import torch

from act_core import cli
from act_core.cli import main
from act_core.mapfile import TransportMap
from act_core import fit_transport

COMMANDS = ["inspect", "demo", "fit-style", "fit-negation", "generate", "sweep", "evaluate",
            "lm-fit", "lm-generate", "lm-eval", "lm-export"]


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _small_map(seed=0):
    g = torch.Generator().manual_seed(seed)
    tmap = TransportMap(meta={"architecture": "sdxl", "method": "linear", "procedure": "simultaneous", "style": "watercolor"})
    tmap.add("unet.mid_block.resnets.0.norm1", fit_transport(torch.randn(16, 4, generator=g),
                                                             torch.randn(16, 4, generator=g) + 1), "spatial_mean", None)
    return tmap


@pytest.fixture
def fake_fit(monkeypatch):
    """fit-style / fit-negation without a real SDXL: load_sdxl returns a stub, fitting returns a small map."""
    import act_core.diffusion.pipeline as D

    class Pipe:
        act_defaults = {"kind": "lightning", "steps": 4, "guidance": 0.0}

    calls = []

    def fit(pipe, name, **kw):
        calls.append((name, kw))
        return _small_map(len(calls))

    monkeypatch.setattr(D, "load_sdxl", lambda *a, **k: Pipe())
    monkeypatch.setattr(D, "fit_style_map", lambda pipe, style, tags=None, **kw: fit(pipe, style, **kw))
    monkeypatch.setattr(D, "fit_negation_map", fit)
    return calls


def test_every_subcommand_is_covered_here():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS), "a new subcommand needs a bad-input test below"


def test_inspect_bad_inputs(tmp_path, capsys):
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    (tmp_path / "m.pt").write_bytes(b"\x80\x04K\x01.")
    (tmp_path / "folder.safetensors").mkdir()
    for path, expect in ((tmp_path / "broken.safetensors", "broken.safetensors"),
                         (tmp_path / "m.pt", "m.pt"),
                         (tmp_path / "folder.safetensors", "folder.safetensors"),
                         (tmp_path / "missing.safetensors", "does not exist")):
        rc, _, err = _run(capsys, "inspect", path)
        assert rc == 2 and err.startswith("act-steer inspect: error: ") and expect in err, err


def test_demo_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "not_a_folder"
    f.write_text("keep me")
    rc, _, err = _run(capsys, "demo", "--out", f)
    assert rc == 2 and "--out" in err and "folder" in err, err
    assert f.read_text() == "keep me"


def test_fit_bad_inputs(tmp_path, capsys, fake_fit):
    out = tmp_path / "m.safetensors"
    cases = [
        (["fit-style", "--model", "m", "--out", out], "give --style"),
        (["fit-style", "--model", "m", "--style", "no_such_style", "--out", out], "no_such_style"),
        (["fit-style", "--model", "m", "--style", "watercolor"], "--out is required"),
        (["fit-style", "--model", "m", "--style", "watercolor", "--out", tmp_path / "m.pt"], "--out must end in .safetensors"),
        (["fit-style", "--style", "watercolor", "--out", out], "--model is required"),
        (["fit-style", "--model", "m", "--style", "watercolor", "--captions", tmp_path / "nope.txt", "--out", out], "nope.txt"),
        (["fit-negation", "--model", "m", "--out", out], "give --concept"),
        (["fit-negation", "--model", "m", "--concept", "unicorn_zebra", "--out", out], "unicorn_zebra"),
    ]
    for argv, expect in cases:
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and ": error: " in err and expect in err, (argv, err)
    assert not fake_fit and not out.exists(), "bad input must be refused before any fitting or writing"


def test_generate_sweep_evaluate_bad_inputs(tmp_path, capsys, monkeypatch):
    import act_core.diffusion.pipeline as D

    def no_model(*a, **k):
        raise AssertionError("bad input must be refused before the model is loaded")

    monkeypatch.setattr(D, "load_sdxl", no_model)
    good = _small_map().save(tmp_path / "good.safetensors")
    missing = tmp_path / "missing.safetensors"
    cases = [
        (["generate", "--model", "m", "--prompt", "a cat", "--map", missing, "--out", tmp_path / "x.png"], "missing.safetensors"),
        (["generate", "--model", "m", "--prompt", "a cat", "--out", tmp_path / "x.jpg"], "--out must be a .png"),
        (["generate", "--model", "m", "--out", tmp_path / "x.png"], "no prompts"),
        (["generate", "--model", "m", "--prompts", tmp_path / "none.txt", "--out", tmp_path / "x.png"], "none.txt"),
        (["sweep", "--model", "m", "--prompt", "a", "--out", tmp_path / "g.png"], "sweep needs --map"),
        (["sweep", "--model", "m", "--map", good, "--strengths", "0:1:0", "--out", tmp_path / "g.png"], "bad --strengths"),
        (["sweep", "--model", "m", "--map", missing, "--out", tmp_path / "g.png"], "missing.safetensors"),
        (["evaluate", "--model", "m", "--clip", tmp_path, "--out", tmp_path / "ev"], "evaluate needs --map"),
        (["evaluate", "--model", "m", "--map", good, "--clip", tmp_path / "no_clip", "--out", tmp_path / "ev"],
         "CLIP folder not found"),
        (["evaluate", "--model", "m", "--map", good, "--clip", tmp_path, "--strengths", "", "--out", tmp_path / "ev"],
         "bad --strengths"),
    ]
    for argv, expect in cases:
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and ": error: " in err and expect in err, (argv, err)
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("failure", ["disk full", "permission", "ctrl-c"])
def test_fit_save_failure_keeps_the_existing_map(tmp_path, capsys, fake_fit, monkeypatch, failure):
    out = tmp_path / "m.safetensors"
    _small_map(99).save(out)
    before = out.read_bytes()
    if failure == "disk full":
        def boom(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        target, name = os, "fsync"
    elif failure == "permission":  # the folder refuses the temporary file the atomic write creates
        real_open = os.open

        def boom(path, *a, **k):
            if str(path).endswith(".tmp"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path))
            return real_open(path, *a, **k)

        target, name = os, "open"
    else:
        def boom(fd):
            raise KeyboardInterrupt()

        target, name = os, "fsync"
    with monkeypatch.context() as mp:
        mp.setattr(target, name, boom)
        rc, out_text, err = _run(capsys, "fit-style", "--model", "m", "--style", "watercolor", "--out", out)
    assert len(fake_fit) == 1  # the fit ran; only the save failed
    if failure == "ctrl-c":
        assert rc == 130 and "cancelled" in err
    else:
        assert rc == 2 and "m.safetensors" in err and "unchanged" in err, err
        assert ("free some disk space" if failure == "disk full" else "writable folder") in err
    assert "saved" not in out_text
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    # and the next run succeeds
    rc, out_text, err = _run(capsys, "fit-style", "--model", "m", "--style", "watercolor", "--out", out)
    assert rc == 0 and "saved" in out_text and out.read_bytes() != before, err


def test_cancelled_fit_writes_nothing(tmp_path, capsys, monkeypatch):
    import act_core.diffusion.pipeline as D

    monkeypatch.setattr(D, "load_sdxl", lambda *a, **k: type("P", (), {"act_defaults": {"kind": "base", "steps": 1,
                                                                                        "guidance": 0.0}})())

    def cancelled(*a, **k):
        raise KeyboardInterrupt()

    monkeypatch.setattr(D, "fit_style_map", cancelled)
    rc, _, err = _run(capsys, "fit-style", "--model", "m", "--style", "watercolor", "--out", tmp_path / "m.safetensors")
    assert rc == 130 and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_lm_commands_bad_inputs(tmp_path, capsys):
    good = _small_map().save(tmp_path / "good.safetensors")
    missing, nomodel = tmp_path / "missing.safetensors", tmp_path / "no_model"
    (tmp_path / "src.txt").write_text("a\nb\n")
    cases = [
        (["lm-fit", "--task", "toxicity", "--out", tmp_path / "m.safetensors"], "no model"),
        (["lm-fit", "--model", nomodel, "--task", "toxicity", "--out", tmp_path / "m.safetensors"], "does not exist"),
        (["lm-fit", "--model", tmp_path, "--smollm2", "--task", "toxicity", "--out", tmp_path / "m.safetensors"], "not both"),
        (["lm-fit", "--smollm2", "--source", tmp_path / "src.txt", "--out", tmp_path / "m.safetensors"], "--target"),
        (["lm-fit", "--smollm2", "--out", tmp_path / "m.safetensors"], "no data"),
        (["lm-fit", "--smollm2", "--task", "toxicity", "--out", tmp_path / "m.pt"], "--out must end in .safetensors"),
        (["lm-generate", "--prompt", "hi"], "no model"),
        (["lm-eval", "--smollm2", "--map", good, "--task", "toxicity", "--strengths", "a,b", "--out", tmp_path / "ev"],
         "--strengths"),
        (["lm-eval", "--smollm2", "--map", missing, "--task", "toxicity", "--out", tmp_path / "ev"], "missing.safetensors"),
        (["lm-export", "--map", good], "nothing to do"),
        (["lm-export", "--map", missing, "--control-vector", tmp_path / "v.gguf"], "missing.safetensors"),
    ]
    for argv, expect in cases:
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and ": error: " in err and expect in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors", "src.txt"]


def test_user_error_is_one_line_and_a_bug_shows_its_traceback(tmp_path, capsys, monkeypatch):
    rc, _, err = _run(capsys, "inspect", tmp_path / "missing.safetensors")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err

    def bug(path):
        return {}["no such key"]  # an internal KeyError: a bug, not a user error

    monkeypatch.setattr(TransportMap, "load", staticmethod(bug))
    (tmp_path / "m.safetensors").write_bytes(b"x")
    rc, _, err = _run(capsys, "inspect", tmp_path / "m.safetensors")
    assert rc == 1 and "Traceback" in err and "KeyError" in err and "internal error" in err, err
    monkeypatch.undo()
    monkeypatch.setenv("ACT_STEER_DEBUG", "1")
    rc, _, err = _run(capsys, "inspect", tmp_path / "missing.safetensors")
    assert rc == 2 and "Traceback" in err and err.strip().endswith("does not exist"), err
