import json

import pytest
import torch

import pxpo_lite
from pxpo_lite import fidelity, world
from pxpo_lite.results import MIME, read_results, record


def test_fidelity_is_perfect_on_world_images():
    p = world.render(200, seed=10**9 + 5)
    f = fidelity.prompt_fidelity(p.images, p.prompts, pxpo_lite.load_segmenter())
    assert f["n"] == 200
    for k in fidelity.ATTRIBUTES + ("all",):
        assert f[k] >= 0.99, (k, f)


def test_fidelity_catches_wrong_prompts():
    p = world.render(100, seed=10**9 + 6)
    # swap each prompt's background for another colour: background fidelity must collapse
    names = list(world.BACKGROUNDS)
    wrong = []
    for a in p.attributes:
        other = names[(names.index(a.background) + 1) % len(names)]
        wrong.append(world.prompt_for(world.Attributes(a.hair_colour, a.hair_style, a.shirt, other)))
    f = fidelity.prompt_fidelity(p.images, wrong, pxpo_lite.load_segmenter())
    assert f["background"] <= 0.05 and f["hair_presence"] >= 0.99


def test_fidelity_bad_input():
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        fidelity.prompt_fidelity(torch.zeros(2, 3, 32, 32), ["a bald portrait with a red shirt on a blue background"])


def test_record_and_read_back(tmp_path, capsys):
    assert record("x", torch.tensor(1.5)) == torch.tensor(1.5)
    assert "x = 1.5" in capsys.readouterr().out
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "display_data", "data": {MIME: {"name": "a", "value": [1, 2]}, "text/plain": "a"}},
        {"output_type": "display_data", "data": {MIME: {"name": "a", "value": 3}}},
    ]}]}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    assert read_results(path) == {"a": 3}
    with pytest.raises(TypeError, match="JSON-serialisable"):
        record("bad", object())
