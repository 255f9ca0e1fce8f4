"""Tuple outputs read as one token sequence, and tuple indices fixed by a naming view
(act_core.hooks: ``_pick`` / ``_replace`` with a tuple index, ``tree_index``)."""

import pytest
import torch

from act_core import ActivationCollector, TransportMap, steer
from act_core.hooks import count_hooks, tree_index
from act_core.mapfile import MapFileError
from act_core.mapformat import MapWriteError
from act_core.transport import UnitTransport


class TwoStreams(torch.nn.Module):
    """Returns ``(txt, img)``: (B, 3, D) and (B, 5, D) token sequences."""

    def forward(self, txt, img):
        return txt * 2.0, img + 1.0


class View(torch.nn.Module):
    """A naming view: ``block.txt`` / ``block.img`` / ``block.all`` name elements of ``block``'s tuple."""

    def __init__(self, block):
        super().__init__()
        self.block = block
        self.__dict__["_index"] = {"block.txt": 0, "block.img": 1, "block.all": (0, 1)}

    def get_submodule(self, target):
        return self.block if target.startswith("block.") else super().get_submodule(target)

    def act_output_index(self, name):
        return self._index.get(name)


def _map(name, omega, beta):
    t = UnitTransport(omega, beta, torch.zeros(9, 2, omega.numel()), torch.zeros(omega.numel(), dtype=torch.int8),
                      "linear", "all")
    m = TransportMap()
    m.add(name, t, "tokens")
    return m


def test_a_tuple_index_reads_the_elements_joined_along_tokens(rng):
    block = TwoStreams()
    view = View(block)
    txt, img = torch.randn(2, 3, 4, generator=rng), torch.randn(2, 5, 4, generator=rng)
    col = ActivationCollector(view, ["block.all"], pooling="mean", stop_after=False)
    with col:
        block(txt, img)
    joined = torch.cat([txt * 2.0, img + 1.0], dim=1)  # 8 tokens: the mean over all of them
    assert torch.allclose(col.take()["block.all"], joined.mean(1)) and col.shapes["block.all"] == (2, 8, 4)
    omega, beta = torch.tensor([1.0, 2.0, 0.5, -1.0]), torch.tensor([0.1, 0.0, -0.2, 0.3])
    with steer(view, _map("block.all", omega, beta), strength=1.0):
        out_txt, out_img = block(txt, img)
    assert torch.allclose(out_txt, (txt * 2.0) * omega + beta) and torch.allclose(out_img, (img + 1.0) * omega + beta)
    assert torch.equal(block(txt, img)[0], txt * 2.0)  # removed


def test_a_view_fixes_which_element_a_name_reads(rng):
    block = TwoStreams()
    view = View(block)
    txt, img = torch.randn(1, 3, 4, generator=rng), torch.randn(1, 5, 4, generator=rng)
    assert tree_index(view, "block.img", None) == 1 and tree_index(view, "block.img", 0) == 0  # a given index wins
    assert tree_index(block, "anything", None) is None
    omega, beta = torch.full((4,), 3.0), torch.zeros(4)
    with steer(view, _map("block.img", omega, beta), strength=1.0):  # the map stores no index: the view's
        out_txt, out_img = block(txt, img)
    assert torch.equal(out_txt, txt * 2.0) and torch.allclose(out_img, (img + 1.0) * 3.0)
    col = ActivationCollector(view, ["block.txt", "block.img"], pooling="none", stop_after=False)
    with col:
        block(txt, img)
    got = col.take()
    assert torch.equal(got["block.txt"], (txt * 2.0)[0]) and torch.equal(got["block.img"], (img + 1.0)[0])


class Pieces(torch.nn.Module):
    """Returns ``(a, b, note)``: (B, 3, D) and (B, 5, E) sequences and a string."""

    def __init__(self, e):
        super().__init__()
        self.e = e

    def forward(self, a, b):
        return a, b, "note"


class Indexed(torch.nn.Module):
    """A naming view giving ``block.x`` the tuple index ``index``."""

    def __init__(self, block, index):
        super().__init__()
        self.block = block
        self.__dict__["_i"] = index

    def get_submodule(self, target):
        return self.block if target == "block.x" else super().get_submodule(target)

    def act_output_index(self, name):
        return self._i if name == "block.x" else None


@pytest.mark.parametrize("index,e,match", [
    ((0, 3), 4, "of 3 items but the map steers item 3"),        # past the end
    ((0, 2), 4, "item 2 of its output is str"),                 # not a tensor
    ((0, 1), 6, r"do not join into one token sequence"),        # widths differ: no single sequence
    ((0, -1), 4, "not an item number"),                         # a negative item
])
def test_a_tuple_index_that_does_not_fit_is_refused_before_anything_changes(index, e, match, rng):
    block = Pieces(e)
    view = Indexed(block, index)
    a, b = torch.randn(1, 3, 4, generator=rng), torch.randn(1, 5, e, generator=rng)
    tmap = _map("block.x", torch.full((4,), 2.0), torch.ones(4))
    with pytest.raises(MapFileError, match=match):
        tmap.check_model(view, probe=lambda: block(a, b))
    with pytest.raises(MapFileError, match=match):
        with steer(view, tmap, strength=1.0):
            block(a, b)
    assert count_hooks(block) == 0
    out = block(a, b)
    assert torch.equal(out[0], a) and torch.equal(out[1], b)  # nothing changed, nothing left
    col = ActivationCollector(view, ["block.x"], pooling="mean", stop_after=False)
    with pytest.raises(MapFileError):
        with col:
            block(a, b)


def test_a_fitting_tuple_index_passes_the_model_check_and_a_file_never_stores_one(tmp_path, rng):
    block = TwoStreams()
    view = View(block)
    txt, img = torch.randn(1, 3, 4, generator=rng), torch.randn(1, 5, 4, generator=rng)
    tmap = _map("block.all", torch.full((4,), 2.0), torch.zeros(4))
    tmap.check_model(view, probe=lambda: block(txt, img))  # the view's (0, 1): both halves, 4 units each
    bad = _map("block.all", torch.full((3,), 2.0), torch.zeros(3))
    with pytest.raises(MapFileError, match="outputs 4 units"):
        bad.check_model(view, probe=lambda: block(txt, img))
    tmap.output_index["block.all"] = (0, 1)  # an in-memory index (a framework's own): not a file format
    with pytest.raises(MapWriteError, match="output_index must be null or an integer"):
        tmap.save(tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())
