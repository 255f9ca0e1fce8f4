"""The map file: round trip, atomic writes, hostile files, validation against a model."""

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save

from act_core import MapFileError, TransportMap, fit_transport
from act_core.mapfile import map_meta_defaults


def small_map(rng, units=(6, 4)):
    tmap = TransportMap(meta=map_meta_defaults("linear", "mean", "causal", "toy", ["a", "b"], ["c", "d"], style="x"))
    for i, d in enumerate(units):
        src = torch.randn(64, d, generator=rng)
        src[:, 0] = 2.0  # a degenerate unit
        tmap.add(f"block.{i}", fit_transport(src, torch.randn(64, d, generator=rng) + 3), "tokens" if i else "spatial_mean")
    return tmap


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = torch.nn.ModuleList([torch.nn.Conv2d(3, 6, 1), torch.nn.Linear(6, 4)])


def test_round_trip(tmp_path, rng):
    tmap = small_map(rng)
    path = tmap.save(tmp_path / "m.safetensors")
    back = TransportMap.load(path)
    assert back.modules == tmap.modules
    for n in tmap.modules:
        for k, v in tmap[n].to_tensors().items():
            assert torch.equal(back[n].to_tensors()[k], v), (n, k)
        assert back.layouts[n] == tmap.layouts[n]
        assert back[n].method == "linear" and back[n].default_support == "q_0_100"
    assert back.meta["style"] == "x" and back.meta["procedure"] == "causal" and back.architecture == "toy"
    assert back.meta["prompts"]["source_count"] == 2
    md = back.to_metadata()
    assert md["modules"]["block.1"]["degenerate_units"] == [0]
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_failed_write_keeps_existing_file(tmp_path, rng, monkeypatch):
    tmap = small_map(rng)
    path = tmap.save(tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space"):
        small_map(rng, units=(3, 3)).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_save_errors(tmp_path, rng):
    with pytest.raises(ValueError, match=".safetensors"):
        small_map(rng).save(tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        small_map(rng).save(tmp_path / "nope" / "m.safetensors")


def _rewrite(data: bytes, edit_meta=None, edit_tensors=None) -> bytes:
    """Rebuild a map file with edited metadata or tensors (a hostile file)."""
    from safetensors.torch import load

    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["act"])
    tensors = load(data)
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    return save(tensors, metadata={"act": json.dumps(meta)})


@pytest.mark.parametrize(
    "case,match",
    [
        ("truncated", "truncated|corrupt"),
        ("garbage", "not a valid safetensors|too short"),
        ("no_meta", "not a transport map"),
        ("newer", "newer than this act-steering"),
        ("wrong_shape", r"shape \(5,\), expected \(6,\)"),
        ("wrong_dtype", "dtype torch.float64"),
        ("nan", "NaN or inf"),
        ("missing", "missing"),
        ("extra", "unexpected"),
        ("bad_name", "invalid module name"),
        ("abs_name", "invalid module name"),
        ("bad_json", "not valid JSON"),
        ("huge_units", "units must be"),
        ("band_order", "lower bound above"),
        ("bad_method", "unknown method"),
    ],
)
def test_hostile_files_fail_clearly(case, match, rng):
    good = small_map(rng).to_bytes()
    if case == "truncated":
        data = good[: len(good) // 2]
    elif case == "garbage":
        data = b"\x05" * 7
    elif case == "no_meta":
        data = save({"w": torch.zeros(2)})
    elif case == "newer":
        data = _rewrite(good, lambda m: m.update(format_version=99))
    elif case == "wrong_shape":
        data = _rewrite(good, edit_tensors=lambda t: t.update({"block.0/omega": torch.zeros(5)}))
    elif case == "wrong_dtype":
        data = _rewrite(good, edit_tensors=lambda t: t.update({"block.0/beta": torch.zeros(6, dtype=torch.float64)}))
    elif case == "nan":
        data = _rewrite(good, edit_tensors=lambda t: t["block.1/omega"].__setitem__(0, float("nan")))
    elif case == "missing":
        data = _rewrite(good, edit_tensors=lambda t: t.pop("block.1/flags"))
    elif case == "extra":
        data = _rewrite(good, edit_tensors=lambda t: t.update({"evil": torch.zeros(1)}))
    elif case == "bad_name":
        data = _rewrite(good, lambda m: m["modules"].update({"../etc": m["modules"].pop("block.0")}))
    elif case == "abs_name":
        data = _rewrite(good, lambda m: m["modules"].update({"/abs.path": m["modules"].pop("block.0")}))
    elif case == "bad_json":
        data = save({"w": torch.zeros(2)}, metadata={"act": "{not json"})
    elif case == "huge_units":
        data = _rewrite(good, lambda m: m["modules"]["block.0"].update(units=10**12))
    elif case == "band_order":
        data = _rewrite(good, edit_tensors=lambda t: t.update({"block.0/bands": t["block.0/bands"].flip(1).contiguous()}))
    else:
        data = _rewrite(good, lambda m: m.update(method="pickle"))
    with pytest.raises(MapFileError, match=match):
        TransportMap.from_bytes(data)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TransportMap.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3)
    with pytest.raises(MapFileError, match="bad.safetensors"):
        TransportMap.load(bad)


def test_check_model(rng):
    tmap = small_map(rng)
    tmap.check_model(Toy(), architecture="toy")
    with pytest.raises(MapFileError, match="fitted on architecture 'toy' but the model is 'sdxl'"):
        tmap.check_model(Toy(), architecture="sdxl")
    wrong = Toy()
    wrong.block[1] = torch.nn.Linear(6, 5)
    with pytest.raises(MapFileError, match="'block.1' has 5 units but the map has 4"):
        tmap.check_model(wrong)
    with pytest.raises(MapFileError, match="'block.0' not found"):
        tmap.check_model(torch.nn.Module())
    tmap.renamed(lambda n: "x" + n).check_model(Toy(), name_map=lambda n: n[1:])


def test_saved_file_permissions_follow_umask_or_old_file(tmp_path, rng):
    old = os.umask(0o022)
    try:
        path = small_map(rng).save(tmp_path / "m.safetensors")
        assert path.stat().st_mode & 0o777 == 0o644
        os.chmod(path, 0o640)
        small_map(rng).save(path)
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_save_follows_a_symlink_and_refuses_non_json_metadata(tmp_path):
    import os

    from act_core import fit_transport
    from act_core.mapfile import MapWriteError, TransportMap

    tmap = TransportMap(meta={"architecture": "x"})
    tmap.add("m", fit_transport(torch.randn(8, 3), torch.randn(8, 3) + 1), "tokens", None)
    real = tmp_path / "maps" / "style.safetensors"
    real.parent.mkdir()
    link = tmp_path / "current.safetensors"
    os.symlink(real, link)
    tmap.save(link)
    assert link.is_symlink() and real.is_file()
    assert torch.equal(TransportMap.load(link)["m"].omega, tmap["m"].omega)
    tmap.meta["when"] = object()
    with pytest.raises(MapWriteError, match="cannot be stored as JSON"):
        tmap.save(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
