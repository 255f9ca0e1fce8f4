"""Map files under attack (issue 13): JSON limits, value ranges, save/load symmetry, sizes, paths, temp files.

Every class of failure has a test that fails on the code before the fix, plus property-based
tests (hypothesis, derandomized): any map in the map space saves and loads back bit for bit;
any map that breaks a format rule is refused by save (MapWriteError, nothing written) and the
same content written by force is refused by load (MapFileError).
"""

import json
import math
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

import act_core.mapformat as fmt
from act_core import MapFileError, TransportMap, fit_transport
from act_core.files import STALE_AFTER, STALE_AFTER_DEAD_OWNER, atomic_write_bytes, clean_stale_temps
from act_core.mapfile import MapWriteError
from act_core.transport import BAND_NAMES, BETA_LIMIT, LAYOUTS, OMEGA_LIMIT, STRENGTH_LIMIT, UnitTransport

SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)
NB = len(BAND_NAMES)


def tiny_map(units=(3, 2), **meta) -> TransportMap:
    g = torch.Generator().manual_seed(0)
    tmap = TransportMap(meta={"architecture": "toy", **meta})
    for i, d in enumerate(units):
        tmap.add(f"block.{i}", fit_transport(torch.randn(16, d, generator=g), torch.randn(16, d, generator=g) + 1),
                 "tokens")
    return tmap


def forced_bytes(tmap: TransportMap, meta_text=None) -> bytes:
    """The map written with no check at all (safetensors' own writer): what a hostile or buggy
    writer could produce from the same content."""
    meta = tmap.to_metadata()
    tensors = {}
    for n, t in tmap.maps.items():
        for k, v in t.to_tensors().items():
            tensors[f"{n}/{k}"] = v.detach().to(torch.uint8 if k == "flags" else torch.float32).contiguous()
    text = meta_text if meta_text is not None else json.dumps(meta, allow_nan=True)
    return st_save(tensors, metadata={"act": text})


def meta_text_with(extra_json: str, tmap=None) -> str:
    """A valid metadata text with one more field, spelled exactly as ``extra_json``."""
    text = json.dumps((tmap or tiny_map()).to_metadata())
    return text[:-1] + ', "extra": ' + extra_json + "}"


def with_header(data: bytes, edit) -> bytes:
    """``data`` with its safetensors header text passed through ``edit`` (offsets kept)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = edit(data[8 : 8 + n].decode())
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


# -- JSON with limits --------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [40, 1000, 100_000])
@pytest.mark.parametrize("where", ["metadata", "header"])
def test_deeply_nested_json_is_a_clear_map_file_error(where, depth):
    """Before: RecursionError (about 1,000 levels in a 2 KB file), also through the ComfyUI Load node."""
    nest = "[" * depth + "]" * depth
    if where == "metadata":
        data = forced_bytes(tiny_map(), meta_text_with(nest))
    else:
        data = with_header(tiny_map().to_bytes(), lambda h: h.rstrip()[:-1] + ', "junk": ' + nest + "}")
    with pytest.raises(MapFileError, match=rf"nested {depth + 1} levels deep \(at most {fmt.MAX_JSON_DEPTH}\)"):
        TransportMap.from_bytes(data)


@pytest.mark.parametrize("value, match", [
    ("9" * 5000, "a number of 5000 characters"),
    ("-" + "1" * 41, "a number of 42 characters"),
    ("1e400", "beyond the float range"),
    ("-1e999", "beyond the float range"),
    ("NaN", "NaN .not a JSON number"),
    ("-Infinity", "-Infinity .not a JSON number"),
])
@pytest.mark.parametrize("field", ["extra", "units", "default_strength"])
def test_huge_or_non_finite_numbers_are_clear_map_file_errors(field, value, match):
    """Before: bare ValueError (int above 4,300 digits) or OverflowError (math.isfinite of a huge int)."""
    tmap = tiny_map()
    meta = tmap.to_metadata()
    if field == "extra":
        text = meta_text_with(value, tmap)
    else:
        marker = "__VALUE__"
        if field == "units":
            meta["modules"]["block.0"]["units"] = marker
        else:
            meta["default_strength"] = marker
        text = json.dumps(meta).replace(f'"{marker}"', value)
    with pytest.raises(MapFileError, match=match):
        TransportMap.from_bytes(forced_bytes(tmap, text))


def test_huge_offsets_in_the_header_are_clear():
    data = with_header(tiny_map().to_bytes(), lambda h: h.replace('"data_offsets":[0,', '"data_offsets":[' + "7" * 3000 + ","))
    with pytest.raises(MapFileError, match="3000 characters"):
        TransportMap.from_bytes(data)


# -- ranges ----------------------------------------------------------------------------------------------

def _set(t: UnitTransport, field: str, value: float) -> None:
    getattr(t, field).view(-1)[0] = value


EXTREMES = [
    ("omega", 3.4e38, "omega of unit 0 is 3.4e\\+38, outside the supported range"),
    ("omega", OMEGA_LIMIT * 10, "outside the supported range ±1e\\+08"),
    ("beta", 1e20, "beta of unit 0 is 1e\\+20, outside the supported range ±1e\\+15"),
    ("omega", float("nan"), "omega holds NaN or inf"),
    ("bands", float("inf"), "bands holds NaN or inf"),
    ("default_strength", 1e308, "default_strength 1e\\+308 is outside the supported range ±1000"),
    ("default_strength", -STRENGTH_LIMIT * 1.5, "default_strength -1500 is outside the supported range"),
    ("default_strength", float("nan"), "holds NaN .not a JSON number. in field 'default_strength'"),
]


@pytest.mark.parametrize("field, value, match", EXTREMES)
def test_values_outside_the_ranges_are_refused_at_save_and_at_load(field, value, match, tmp_path):
    """Before: a default strength of 1e308 or an ω of 3.4e38 loaded and made the model output inf."""
    tmap = tiny_map()
    if field == "default_strength":
        tmap.meta["default_strength"] = value
    else:
        _set(tmap["block.0"], field, value)
    with pytest.raises(MapWriteError, match=match):
        tmap.save(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MapFileError, match=match):
        TransportMap.from_bytes(forced_bytes(tmap))


def test_the_ranges_hold_for_everything_a_fit_produces():
    """A near-constant source unit would give a slope far beyond OMEGA_LIMIT: the estimators
    treat it as constant (flagged, ω = 1) so every fitted map is within the ranges and saves."""
    g = torch.Generator().manual_seed(1)
    src = torch.randn(64, 3, generator=g)
    src[:, 1] = 1e-10 * torch.randn(64, generator=g)  # spread 1e-10 around 0: not constant by the 1e-12 rule
    dst = torch.randn(64, 3, generator=g) * 10
    for method in ("linear", "gaussian"):
        t = fit_transport(src, dst, method)
        assert t.omega.abs().max() <= OMEGA_LIMIT and bool(t.degenerate[1]) and t.omega[1] == 1
        tmap = TransportMap()
        tmap.add("m", t, "tokens")
        back = TransportMap.from_bytes(tmap.to_bytes())
        assert torch.equal(back["m"].omega, t.omega)
    with pytest.raises(ValueError, match="outside the supported range"):
        UnitTransport(torch.full((2,), 1e9), torch.zeros(2), torch.zeros(NB, 2, 2), torch.zeros(2, dtype=torch.uint8))


# -- save refuses first what load refuses ---------------------------------------------------------------------

def _t(d=2):
    return UnitTransport(torch.ones(d), torch.zeros(d), torch.zeros(NB, 2, d), torch.zeros(d, dtype=torch.uint8))


def _mutations():
    """name -> function(tmap) making it break one format rule (the cases of issue 13 and more)."""
    def meta(key, value):
        return lambda m: m.meta.__setitem__(key, value)

    def first(m):
        return next(iter(m.maps))

    def entry(attr, value):
        return lambda m: getattr(m, attr).__setitem__(first(m), value)

    def transport(attr, value):
        return lambda m: setattr(m[first(m)], attr, value)

    def rename(new):
        def f(m):
            old = first(m)
            for table in (m.maps, m.layouts, m.output_index):
                items = [((new if k == old else k), v) for k, v in table.items()]
                table.clear()
                table.update(items)
        return f

    def values(field, v):
        return lambda m: _set(m[first(m)], field, v)

    return {
        "empty map": lambda m: (m.maps.clear(), m.layouts.clear(), m.output_index.clear()),
        "0-unit module": lambda m: m.maps.__setitem__(first(m), _t(0)),
        "NaN default strength": meta("default_strength", float("nan")),
        "huge default strength": meta("default_strength", 1e308),
        "boolean default strength": meta("default_strength", True),
        "300-character architecture": meta("architecture", "a" * 300),
        "numeric architecture": meta("architecture", 5),
        "unknown method": meta("method", "pickle"),
        "numeric pooling": meta("pooling", 3),
        "unknown default support": meta("default_support", "q_7_93"),
        "output_index 64": entry("output_index", 64),
        "output_index -1": entry("output_index", -1),
        "output_index True": entry("output_index", True),
        "output_index '0'": entry("output_index", "0"),
        "unknown layout": entry("layouts", "diagonal"),
        "traversal name": rename("../etc"),
        "absolute name": rename("/abs"),
        "empty name": rename(""),
        "600-character name": rename("x" * 600),
        "unknown module method": transport("method", "magic"),
        "unknown module support": transport("default_support", "bogus"),
        "ω beyond the range": values("omega", 1e9),
        "β beyond the range": values("beta", 1e16),
        "NaN ω": values("omega", float("nan")),
        "infinite band": values("bands", float("-inf")),
        "inverted band": lambda m: setattr(m[first(m)], "bands", m[first(m)].bands.flip(1).contiguous()),
        "unknown flags": lambda m: m[first(m)].flags.__setitem__(0, 7),
        "NaN in extra metadata": meta("extra", [1.0, float("nan")]),
        "deep extra metadata": meta("extra", json.loads("[" * 40 + "]" * 40)),
        "huge integer in extra metadata": meta("extra", 10**50),
        "lone surrogate in a value": meta("extra", "caf\ud800"),
        "lone surrogate in a key": meta("caf\udfff", 1),
        "metadata over the limit": meta("extra", "x" * (fmt.MAX_METADATA_BYTES + 1)),
    }


MUTATIONS = _mutations()


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_what_load_refuses_save_refuses_first(case, tmp_path):
    """Before: an empty map, a 0-unit module, a NaN default strength, a 300-character
    architecture, an out-of-range output_index, a lone surrogate... saved fine (or raised raw
    errors) and then failed to load."""
    tmap = tiny_map()
    MUTATIONS[case](tmap)
    with pytest.raises(MapWriteError, match="cannot save this map"):
        tmap.save(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file
    try:
        forced = forced_bytes(tmap)
    except (ValueError, TypeError, UnicodeEncodeError):  # cannot even be forced into a safetensors file
        return
    with pytest.raises(MapFileError):
        TransportMap.from_bytes(forced)


@settings(max_examples=120, **SETTINGS)
@given(cases=st.lists(st.sampled_from(sorted(set(MUTATIONS) - {"metadata over the limit"})), min_size=1, max_size=3,
                      unique=True))
def test_any_combination_of_broken_rules_is_refused_at_both_ends(cases):
    tmap = tiny_map()
    for c in cases:
        MUTATIONS[c](tmap)
        if not tmap.maps:
            break
    with pytest.raises(MapWriteError):
        tmap.to_bytes()
    try:
        forced = forced_bytes(tmap)
    except (ValueError, TypeError, UnicodeEncodeError):
        return
    with pytest.raises(MapFileError):
        TransportMap.from_bytes(forced)


def test_one_transport_stored_under_two_names_round_trips(tmp_path):
    """Before: safetensors refused the shared memory with a raw RuntimeError."""
    t = tiny_map()["block.0"]
    tmap = TransportMap(meta={"architecture": "toy"})
    tmap.add("a", t, "tokens")
    tmap.add("b", t, "tokens")
    back = TransportMap.load(tmap.save(tmp_path / "m.safetensors"))
    assert torch.equal(back["a"].omega, t.omega) and torch.equal(back["b"].bands, t.bands)


def test_the_module_limit_is_clear_at_both_ends(monkeypatch, tmp_path):
    tmap = tiny_map(units=(2, 2, 2, 2))
    data = tmap.to_bytes()
    monkeypatch.setattr(fmt, "MAX_MODULES", 3)
    with pytest.raises(MapWriteError, match="4 modules, more than the supported 3"):
        tmap.save(tmp_path / "m.safetensors")
    with pytest.raises(MapFileError, match="4 modules, more than the supported 3"):
        TransportMap.from_bytes(data)


# -- the round trip over the map space --------------------------------------------------------------------------

F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
NAMES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,6}(\.[A-Za-z0-9_\-]{1,5}){0,2}", fullmatch=True)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=6,
)
BETA32 = float(torch.tensor(BETA_LIMIT, dtype=torch.float32))  # the float32 just below 1e15
RESERVED = {"modules", "format", "format_version", "bands", "method", "pooling", "architecture", "default_strength",
            "default_support", "library_version"}


@st.composite
def transports(draw, d):
    def vec(lo, hi):
        return torch.tensor(draw(st.lists(st.floats(lo, hi, width=32) | st.sampled_from([lo, hi, 0.0, -0.0, 1e-45]),
                                          min_size=d, max_size=d)), dtype=torch.float32)

    bounds = torch.tensor(draw(st.lists(st.tuples(F32, F32).map(sorted), min_size=NB * d, max_size=NB * d)),
                          dtype=torch.float32).view(NB, d, 2).transpose(1, 2).contiguous()
    flags = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=d, max_size=d)), dtype=torch.uint8)
    return UnitTransport(vec(-OMEGA_LIMIT, OMEGA_LIMIT), vec(-BETA32, BETA32), bounds, flags,
                         draw(st.sampled_from(fmt.METHODS)), draw(st.sampled_from(list(BAND_NAMES) + ["all"])))


@st.composite
def maps(draw):
    meta = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in RESERVED), JSON, max_size=3))
    meta["architecture"] = draw(st.none() | st.text(max_size=fmt.MAX_ARCHITECTURE_CHARS))
    meta["default_strength"] = draw(st.floats(-STRENGTH_LIMIT, STRENGTH_LIMIT) | st.integers(-1000, 1000))
    meta["pooling"] = draw(st.sampled_from(["mean", "max", "last", "none"]))
    tmap = TransportMap(meta=meta)
    for name in draw(st.lists(NAMES, min_size=1, max_size=4, unique=True)):
        tmap.add(name, draw(transports(draw(st.integers(1, 4)))), draw(st.sampled_from(LAYOUTS)),
                 draw(st.none() | st.integers(0, fmt.MAX_OUTPUT_INDEX)))
    return tmap


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


@settings(max_examples=80, **SETTINGS)
@given(tmap=maps())
def test_what_save_writes_load_accepts_bit_for_bit(tmap):
    back = TransportMap.from_bytes(tmap.to_bytes())
    assert back.modules == tmap.modules
    assert back.layouts == tmap.layouts and back.output_index == tmap.output_index
    for n, t in tmap.maps.items():
        for k, v in t.to_tensors().items():
            assert torch.equal(_bits(back[n].to_tensors()[k]), _bits(v)), (n, k)
        assert (back[n].method, back[n].default_support) == (t.method, t.default_support)
    want = {k: v for k, v in tmap.to_metadata().items() if k not in ("modules", "bands", "format")}
    assert back.meta == want
    assert back.to_bytes() == tmap.to_bytes()  # and what load returns saves to the same bytes


@settings(max_examples=25, **SETTINGS)
@given(tmap=maps())
def test_the_safetensors_library_reads_what_save_writes(tmap):
    from safetensors.torch import load

    tensors = load(tmap.to_bytes())
    for n, t in tmap.maps.items():
        assert torch.equal(_bits(tensors[f"{n}/omega"]), _bits(t.omega))
        assert torch.equal(tensors[f"{n}/flags"], t.flags)


# -- sizes before reading ------------------------------------------------------------------------------------------

def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io to count the bytes read")
@pytest.mark.parametrize("kind", ["junk", "valid header, junk body", "header longer than the limit"])
def test_a_huge_file_is_checked_before_it_is_read(kind, tmp_path):
    """Before: a 1.5 GB junk file was read whole before its header was checked."""
    path = tmp_path / "huge.safetensors"
    size = 1_500_000_000
    with open(path, "wb") as f:  # sparse: no disk space used
        if kind == "junk":
            f.write(b"\xff" * 64)
        elif kind == "valid header, junk body":
            data = tiny_map().to_bytes()
            (n,) = struct.unpack("<Q", data[:8])
            f.write(data[: 8 + n])
        else:
            f.write(struct.pack("<Q", 200_000_000) + b"{")
        f.truncate(size)
    before = _read_bytes()
    with pytest.raises(MapFileError) as e:
        TransportMap.load(path)
    assert _read_bytes() - before < 1_000_000, "the file was read before its sizes were checked"
    msg = str(e.value)
    if kind == "header longer than the limit":
        # before: "header claims 200000000 bytes but the file has 1499999992" (it has them)
        assert "says 200000000 bytes, more than the 100000000 a map file may have" in msg, msg
    elif kind == "valid header, junk body":
        assert "bytes of tensor data but its header describes" in msg, msg


@settings(max_examples=80, **SETTINGS)
@given(claimed=st.integers(0, 2**64 - 1), size=st.integers(8, 10_000))
def test_header_length_messages_never_contradict_themselves(claimed, size):
    data = struct.pack("<Q", claimed) + b" " * (size - 8)
    with pytest.raises(MapFileError) as e:
        TransportMap.from_bytes(data)
    msg = str(e.value)
    if "only" in msg:  # "says N bytes but only M bytes follow it": N > M, both true
        import re

        n, m = map(int, re.search(r"says (\d+) bytes but only (\d+) bytes", msg).groups())
        assert n == claimed and m == size - 8 and n > m, msg
    if "more than the" in msg and "a map file may have" in msg:
        assert claimed > fmt.MAX_HEADER_BYTES, msg


# -- paths that are not map files --------------------------------------------------------------------------------------

def _cases(tmp_path):
    yield "a folder", tmp_path, "a directory"
    fifo = tmp_path / "pipe.safetensors"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)
        yield "a FIFO", fifo, "FIFO"
    if os.path.exists("/dev/null"):
        yield "a device", "/dev/null", "character device"
    if os.path.exists("/proc/self/status"):
        yield "a /proc file (size 0)", "/proc/self/status", "too short"
    if os.path.exists("/proc/self/mem"):
        yield "/proc/self/mem", "/proc/self/mem", "too short"
    loop = tmp_path / "loop.safetensors"
    os.symlink(loop, loop)
    yield "a link to itself", loop, "cannot open map file"
    yield "an over-long name", tmp_path / ("x" * 300 + ".safetensors"), "cannot open map file .*too long"
    yield "a name too long for the system", tmp_path / "/".join(["y" * 200] * 30), "cannot open map file"
    yield "a NUL in the name", str(tmp_path / "a\0b.safetensors"), "cannot open map file"
    if os.name == "posix" and os.geteuid() != 0:
        locked = tmp_path / "locked.safetensors"
        locked.write_bytes(tiny_map().to_bytes())
        locked.chmod(0)
        yield "no read permission", locked, "Permission denied"


def test_paths_that_are_not_readable_map_files_give_map_file_errors(tmp_path):
    """Before: /proc files and over-long names raised bare OSError."""
    seen = []
    for what, path, match in _cases(tmp_path):
        with pytest.raises(MapFileError, match=match):
            TransportMap.load(path)
        seen.append(what)
    assert len(seen) >= 5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TransportMap.load(tmp_path / "missing.safetensors")


# -- temporary files of killed saves ---------------------------------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_save_killed_midway_leaves_a_temp_file_that_the_next_save_removes(tmp_path):
    """Before: a process killed while saving left a hidden full-size temp file that no later save cleaned."""
    target = tmp_path / "m.safetensors"
    tiny_map().save(target)
    before = target.read_bytes()
    ready = tmp_path / "ready"
    child = textwrap.dedent(f"""
        import os, sys, time, torch
        sys.path.insert(0, {os.getcwd()!r})
        from act_core import TransportMap, fit_transport
        tmap = TransportMap(meta={{"architecture": "toy"}})
        tmap.add("m", fit_transport(torch.randn(64, 5000), torch.randn(64, 5000) + 1), "tokens")
        def stuck(fd):  # the bytes are written; hang before they are synced and renamed
            open({str(ready)!r}, "w").close()
            time.sleep(60)
        os.fsync = stuck
        tmap.save({str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline, "the child did not reach the write"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".m.safetensors.")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 400_000  # the full-size temporary file
    assert target.read_bytes() == before  # the old map is intact
    tiny_map().save(target)  # a fresh leftover of a dead writer is kept a while (its save might be recent)...
    assert leftovers[0].exists()
    old = time.time() - STALE_AFTER_DEAD_OWNER - 60
    os.utime(leftovers[0], (old, old))
    tiny_map(units=(4,)).save(target)  # ...and removed once it is stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "ready"]
    assert TransportMap.load(target).modules == ["block.0"]


def test_only_stale_temp_files_of_our_pattern_are_removed(tmp_path):
    now = time.time()
    dead, alive = _dead_pid(), os.getpid()
    files = {  # name -> (age in seconds, removed?)
        f".m.safetensors.{dead}-0123abcd.tmp": (STALE_AFTER_DEAD_OWNER + 60, True),  # writer gone, stale
        f".m.safetensors.{dead}-0123abce.tmp": (30, False),  # writer gone, but recent
        f".m.safetensors.{alive}-0123abcf.tmp": (STALE_AFTER_DEAD_OWNER + 60, False),  # writer alive
        f".m.safetensors.{alive}-0123abc0.tmp": (STALE_AFTER + 60, True),  # older than any save
        ".m.safetensors.k3j_x9a2.tmp": (STALE_AFTER + 60, True),  # an earlier version's temporary name
        ".m.safetensors.k3j_x9a3.tmp": (3600, False),
        f".other.safetensors.{dead}-0123abcd.tmp": (STALE_AFTER + 60, False),  # another target
        ".m.safetensors.tmp": (STALE_AFTER + 60, False),  # not our pattern
        "m.safetensors.bak": (STALE_AFTER + 60, False),
        f".m.safetensors.{dead}-0123abcd.tmpx": (STALE_AFTER + 60, False),
    }
    for name, (age, _) in files.items():
        p = tmp_path / name
        p.write_bytes(b"x")
        os.utime(p, (now - age, now - age))
    link = tmp_path / f".m.safetensors.{dead}-9999abcd.tmp"
    os.symlink(tmp_path / "m.safetensors.bak", link)  # a link with our pattern is never followed or removed
    os.utime(link, (now - STALE_AFTER - 60,) * 2, follow_symlinks=False)
    atomic_write_bytes(tmp_path / "m.safetensors", b"new")
    left = {p.name for p in tmp_path.iterdir()}
    for name, (_, removed) in files.items():
        assert (name not in left) == removed, name
    assert link.name in left and (tmp_path / "m.safetensors").read_bytes() == b"new"
    assert clean_stale_temps(tmp_path) == [f".other.safetensors.{dead}-0123abcd.tmp"]  # all targets: that one too


@settings(max_examples=40, **SETTINGS)
@given(chunks=st.lists(st.binary(max_size=64), max_size=4))
def test_atomic_writes_of_chunks_leave_exactly_the_target(chunks, tmp_path_factory):
    folder = tmp_path_factory.mktemp("w")
    atomic_write_bytes(folder / "f.bin", chunks)
    assert [p.name for p in folder.iterdir()] == ["f.bin"] and (folder / "f.bin").read_bytes() == b"".join(chunks)
    mode = stat.S_IMODE((folder / "f.bin").stat().st_mode)
    assert mode & 0o600 == 0o600
