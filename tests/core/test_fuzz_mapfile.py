"""Fuzz the map-file reader with hostile files (hypothesis, derandomized).

Every generated file must either load into a fully valid TransportMap or fail with the
project's own MapFileError — never another exception, a crash or a hang — and a map that
does not fit the model must be refused by check_model before any hook is attached.
The outcome counts are printed in the test summary.
"""

import json
import struct
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from act_core import MapFileError, TransportMap, attach, count_hooks, fit_transport

COUNTS = Counter()
SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def base_map() -> TransportMap:
    g = torch.Generator().manual_seed(0)
    tmap = TransportMap()
    for i, d in enumerate((4, 3)):
        tmap.add(f"layers.{i}", fit_transport(torch.randn(16, d, generator=g), torch.randn(16, d, generator=g) + 1),
                 "tokens")
    return tmap


GOOD = base_map().to_bytes()


def split(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def outcome(data: bytes) -> str:
    try:
        tmap = TransportMap.from_bytes(data)
    except MapFileError:
        COUNTS["rejected with MapFileError"] += 1
        return "rejected"
    # whatever loads must be fully usable and finite
    for t in tmap.maps.values():
        assert torch.isfinite(t.omega).all() and torch.isfinite(t.beta).all()
        y = t.apply(torch.randn(2, t.units), 1.0, "q_0_100")
        assert torch.isfinite(y).all()
    COUNTS["loaded (benign mutation)"] += 1
    return "loaded"


@settings(max_examples=250, **SETTINGS)
@given(cut=st.integers(min_value=0, max_value=len(GOOD) - 1))
def test_truncated(cut):
    assert outcome(GOOD[:cut]) == "rejected"


@settings(max_examples=400, **SETTINGS)
@given(flips=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 7)), min_size=1, max_size=4))
def test_bit_flips(flips):
    data = bytearray(GOOD)
    for pos, bit in flips:
        data[pos] ^= 1 << bit
    outcome(bytes(data))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
META_KEYS = ["format", "format_version", "bands", "method", "pooling", "architecture", "default_strength",
             "default_support", "modules"]
ENTRY_KEYS = ["units", "layout", "output_index", "method", "default_support"]


@settings(max_examples=300, **SETTINGS)
@given(key=st.sampled_from(META_KEYS + ["<module entry>", "<module name>"]), sub=st.sampled_from(ENTRY_KEYS),
       value=JSON_VALUES, name=st.sampled_from(["..", "../x", "/abs", "a/b", "", "x" * 300, "ok.name", "é", "a..b"]))
def test_lying_metadata(key, sub, value, name):
    header, body = split(GOOD)
    meta = json.loads(header["__metadata__"]["act"])
    if key == "<module entry>":
        meta["modules"]["layers.0"][sub] = value
    elif key == "<module name>":
        meta["modules"][name] = meta["modules"].pop("layers.0")
    else:
        meta[key] = value
    header["__metadata__"]["act"] = json.dumps(meta)
    outcome(join(header, body))


@settings(max_examples=150, **SETTINGS)
@given(which=st.sampled_from(["omega", "beta", "bands", "flags"]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool]),
       shape=st.lists(st.integers(0, 5), min_size=0, max_size=3),
       special=st.sampled_from([None, float("nan"), float("inf"), -float("inf"), 1e38]))
def test_wrong_tensors(which, dtype, shape, special):
    header, body = split(GOOD)
    from safetensors.torch import load

    tensors = load(GOOD)
    t = torch.zeros(shape, dtype=torch.float64)
    if special is not None and t.numel():
        t.view(-1)[0] = special
    tensors[f"layers.1/{which}"] = t.to(dtype)
    data = save(tensors, metadata=header["__metadata__"])
    outcome(data)


@settings(max_examples=60, **SETTINGS)
@given(n=st.sampled_from([2**63, 2**40, 10**9, len(GOOD), len(GOOD) - 9, 0, 1]))
def test_huge_or_lying_header_length(n):
    assert outcome(struct.pack("<Q", n) + GOOD[8:]) == "rejected"


@settings(max_examples=200, **SETTINGS)
@given(where=st.sampled_from(["meta", "entry", "header"]),
       value=st.one_of(
           st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
           st.integers(1, 3000).map(lambda n: '{"a":' * n + "0" + "}" * n),
           st.integers(1, 6000).map(lambda n: "9" * n),
           st.sampled_from(["1e400", "-1e999", "NaN", "Infinity", "-Infinity", "3.4e38", "1e308", "-0.0",
                            '"\\ud800"', '"\\udfff\\ud800"', '"' + "x" * 5000 + '"']),
       ),
       key=st.sampled_from(["default_strength", "architecture", "units", "output_index", "extra"]))
def test_extreme_json_and_values(where, value, key):
    """Deep nesting, huge or non-finite numbers, lone surrogates: MapFileError or a valid map, never a raw error."""
    header, body = split(GOOD)
    text = header["__metadata__"]["act"]
    marker = '"__X__"'
    meta = json.loads(text)
    if where == "meta":
        meta[key] = "__X__"
    elif where == "entry":
        meta["modules"]["layers.0"][key] = "__X__"
    header["__metadata__"]["act"] = json.dumps(meta).replace(marker, value)
    if where == "header":
        raw = json.dumps(header)[:-1] + ', "' + key + '": ' + value + "}"
        data = struct.pack("<Q", len(raw.encode())) + raw.encode() + body
    else:
        data = join(header, body)
    outcome(data)


class Model(torch.nn.Module):
    def __init__(self, widths):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, w) for w in widths])


@pytest.mark.parametrize("widths", [(4,), (4, 5), (3, 3), (4, 3, 7)])
def test_map_for_another_model_is_refused_before_attaching(widths):
    tmap = TransportMap.from_bytes(GOOD)
    model = Model(widths)
    if widths[:2] == (4, 3):
        tmap.check_model(model)
        COUNTS["fits the model"] += 1
        return
    with pytest.raises(MapFileError):
        tmap.check_model(model)
    COUNTS["refused by check_model"] += 1
    assert count_hooks(model) == 0
    # a missing module or a width mismatch: attaching checks the model first and attaches nothing
    with pytest.raises(MapFileError, match="does not fit this model"):
        attach(model, tmap)
    assert count_hooks(model) == 0


def test_fuzz_summary(request):
    total = sum(COUNTS.values())
    if total:
        request.config._act_report = getattr(request.config, "_act_report", [])
        request.config._act_report.append(
            f"map-file fuzz: {total} hostile files/cases: " + ", ".join(f"{v} {k}" for k, v in sorted(COUNTS.items()))
            + ", 0 raw exceptions (any other exception fails the test)"
        )
    assert COUNTS["rejected with MapFileError"] >= 500 or total == 0
