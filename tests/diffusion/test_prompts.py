"""Shipped prompt data and the prompt-file loader."""

import json

import pytest

from act_core.diffusion import prompts as P

REQUIRED_STYLES = ["anime", "watercolor", "cyberpunk", "impressionism", "pencil_sketch", "art_nouveau",
                   "pixel_art", "oil_painting", "3d_render", "photorealism"]


def test_shipped_data_sizes_and_split():
    allc = P.captions("all")
    assert len(allc) >= 300 and len(set(allc)) == len(allc)
    tr, ev = P.captions("train"), P.captions("eval")
    assert not set(tr) & set(ev) and len(tr) + len(ev) == len(allc)
    assert len(ev) == len(allc) // 5
    assert P.captions("eval") == ev  # deterministic
    for s in REQUIRED_STYLES:
        assert s in P.list_styles()
        assert len(P.style_info(s)["tags"]) >= 10
    for c in ("pink_elephant", "white_bear", "gorilla"):
        info = P.concept_info(c)
        assert len(info["modifiers"]) >= 10 and len(info["negated"]) >= 10
        assert all(info["label"] in m for m in info["modifiers"])
    with pytest.raises(ValueError, match="split"):
        P.captions("val")


def test_style_pairs_construction():
    src, tgt = P.style_pairs("watercolor", n=40, seed=3)
    assert len(src) == len(tgt) == 40
    train = set(P.captions("train"))
    assert set(src) <= train and len(set(src)) == 40  # no repeats while the pool lasts
    tags = P.style_info("watercolor")["tags"]
    for s, t in zip(src, tgt):
        assert t.startswith(s + " ")
        used = t[len(s) + 1:].split(", ")
        assert len(used) == 10 and used[:5] == tags[:5]
        assert set(used[5:]) <= set(tags[5:]) and len(set(used[5:])) == 5
    assert P.style_pairs("watercolor", n=40, seed=3) == (src, tgt)
    assert P.style_pairs("watercolor", n=40, seed=4) != (src, tgt)
    # names are forgiving; more prompts than captions cycle through the pool
    assert P.style_pairs("Pencil Sketch", n=3)[1][0].endswith(tuple(P.style_info("pencil_sketch")["tags"]))
    big_src, _ = P.style_pairs("anime", n=len(train) + 5)
    assert len(big_src) == len(train) + 5 and len(set(big_src)) == len(train)


def test_style_pairs_free_tags_and_captions():
    src, tgt = P.style_pairs("my style", n=2, captions=["A dog.", "", "A cat."], tags="crayon, childlike, bright")
    assert sorted(src) == ["A cat.", "A dog."]
    assert all(t.endswith("crayon, childlike, bright") for t in tgt)
    src, tgt = P.style_pairs("x", n=1, captions=["A dog."], tags=["a_b", "c"])
    assert tgt == ["A dog. a b, c"]
    with pytest.raises(ValueError, match="tags are empty"):
        P.style_pairs("x", tags=" , ")
    with pytest.raises(ValueError, match="caption list is empty"):
        P.style_pairs("anime", captions=["  "])


def test_unknown_names_list_known_and_close():
    with pytest.raises(ValueError) as e:
        P.style_pairs("watercolour")
    msg = str(e.value)
    assert "Did you mean watercolor" in msg and "anime" in msg and "cyberpunk" in msg
    with pytest.raises(ValueError, match="Did you mean pink_elephant"):
        P.negation_pairs("pink elefant")
    assert P.style_label("ukiyo-e") == "ukiyo-e" and P.style_label("my_style") == "my style"


def test_negation_pairs_and_eval():
    src, tgt = P.negation_pairs("pink_elephant", n=30, seed=1)
    mods = P.concept_info("pink_elephant")["modifiers"]
    assert len(src) == len(tgt) == 30
    for s, t in zip(src, tgt):
        assert s.startswith(t.rstrip(".") + ", ")
        assert s[len(t.rstrip(".")) + 2:].rstrip(".") in mods
        assert "elephant" not in t.lower()  # captions already showing the concept are skipped
    assert len({s[len(t) + 1:] for s, t in zip(src, tgt)}) == len(mods)  # all modifiers are used
    ev = P.negation_eval_prompts("white bear", n=16)
    evc = set(P.captions("eval"))
    neg = P.concept_info("white_bear")["negated"]
    assert len(ev) == 16
    for p in ev:
        base, mod = p.split(", ", 1)[0], p.rstrip(".")
        assert base + "." in evc or any(p.startswith(c.rstrip(".")) for c in evc)
        assert any(mod.endswith(n) for n in neg)
        assert "teddy bear" not in p


def _write(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    return f


def test_load_prompt_file_formats(tmp_path):
    assert P.load_prompt_file(_write(tmp_path, "a.txt", "one\n\n  two  \n")) == ["one", "two"]
    assert P.load_prompt_file(_write(tmp_path, "b.json", json.dumps(["x", " ", {"prompt": "y"}]))) == ["x", "y"]
    coco = {"images": [], "annotations": [{"id": 1, "caption": "A cat."}, {"id": 2, "caption": " A dog. "}]}
    assert P.load_prompt_file(_write(tmp_path, "captions_val2017.json", json.dumps(coco))) == ["A cat.", "A dog."]
    assert P.load_prompt_file(_write(tmp_path, "c.csv", 'id,caption\n1,"A cat, sitting."\n2,A dog.\n')) == [
        "A cat, sitting.", "A dog."]
    assert P.load_prompt_file(_write(tmp_path, "d.csv", "first,other\nsecond,x\n")) == ["first", "second"]
    assert P.load_prompt_file(_write(tmp_path, "e.tsv", "text\tn\nA, b\t1\n")) == ["A, b"]
    assert P.load_prompt_file(_write(tmp_path, "f.jsonl", '"a"\n{"text": "b"}\n')) == ["a", "b"]
    assert P.load_prompt_file(_write(tmp_path, "g.prompts", '["sniffed"]')) == ["sniffed"]


def test_load_prompt_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        P.load_prompt_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="no prompts"):
        P.load_prompt_file(_write(tmp_path, "empty.txt", "\n  \n"))
    with pytest.raises(ValueError, match="no prompts"):
        P.load_prompt_file(_write(tmp_path, "empty.json", "[]"))
    with pytest.raises(ValueError, match="not valid JSON"):
        P.load_prompt_file(_write(tmp_path, "bad.json", "[1,"))
    with pytest.raises(ValueError, match="unsupported JSON"):
        P.load_prompt_file(_write(tmp_path, "obj.json", '{"a": 1}'))
    with pytest.raises(ValueError, match="is a folder"):
        P.load_prompt_file(tmp_path)


def test_negation_captions_that_all_mention_the_concept_get_a_clear_error():
    from act_core.diffusion.prompts import negation_pairs

    with pytest.raises(ValueError, match="all 2 captions mention the concept"):
        negation_pairs("pink_elephant", 4, captions=["a pink elephant in a room", "two pink elephants dancing"])
