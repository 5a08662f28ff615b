"""Per-layer routing: name matching, tables, gates, and one-line errors."""

from __future__ import annotations

import pytest
import torch

from dawin_fast.nn import Routing, route
from dawin_fast.nn.routing import name_layers


def test_longest_prefix_wins_and_unmatched_layers_use_the_default():
    coeffs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    routing = Routing(coeffs, torch.tensor([0, 1, 3]), layers={
        "enc": torch.tensor([0.5, 0.5]), "enc.layers.1": torch.tensor([[0.2, 0.8], [0.3, 0.7]])})
    assert routing.resolve("other") is routing
    assert routing.resolve(None) is routing
    assert routing.resolve("encoder.x") is routing  # "enc" is not a prefix of "encoder"
    torch.testing.assert_close(routing.resolve("enc.layers.0.fc").coeffs,
                               torch.tensor([[0.5, 0.5]]))
    assert routing.resolve("enc.layers.0.fc").offsets is None
    sub = routing.resolve("enc.layers.1.fc")
    torch.testing.assert_close(sub.coeffs, torch.tensor([[0.2, 0.8], [0.3, 0.7]]))
    assert sub.offsets is routing.offsets


def test_gate_is_asked_with_the_layer_input():
    routing = Routing(torch.tensor([1.0, 0.0]), layers={"a": lambda x: x[:, 0, :2]})
    x = torch.rand(3, 4, 5)
    sub = routing.resolve("a.b", x)
    torch.testing.assert_close(sub.coeffs, x[:, 0, :2])
    assert sub.offsets.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("layers, match", [
    ({"a": torch.rand(3, 2)}, "must be floating point"),
    ({"a": torch.rand(1, 3)}, "must be floating point"),
    ({"a": torch.tensor([float("nan"), 0.0])}, "NaN"),
    ({"a": 3}, "callable"),
    ({"": torch.rand(2)}, "non-empty"),
])
def test_bad_layer_tables_raise(layers, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Routing(torch.rand(2, 2), torch.tensor([0, 1, 2]), layers=layers)


def test_bad_gate_output_raises_naming_the_layer():
    routing = Routing(torch.tensor([1.0, 0.0]), layers={"blk": lambda x: torch.rand(5, 2)})
    with pytest.raises(ValueError, match="'blk'.*expected"):
        routing.resolve("blk.fc", torch.rand(3, 4))
    with pytest.raises(ValueError, match="needs the layer's batch-first input"):
        routing.resolve("blk.fc")


def test_route_rejects_layers_beside_a_routing():
    routing = Routing(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="pass offsets and layers to the Routing"):
        with route(routing, layers={"a": torch.rand(2)}):
            pass


def test_name_layers_uses_module_names():
    from dawin_fast import DaWinLinear

    model = torch.nn.Sequential(torch.nn.Sequential(DaWinLinear(2, 3, 2)))
    name_layers(model)
    assert model[0][0].routing_name == "0.0"


def _tiny_vit():
    from dawin_fast import DaWinViT
    from tests.models import tiny_open_clip_visual

    return DaWinViT.from_open_clip([tiny_open_clip_visual(s) for s in (0, 1)])


@pytest.mark.parametrize("name, closest", [
    ("transformer.resblock.1.mlp.c_fc", "'transformer.resblocks.1.mlp.c_fc'"),
    ("transformer.resblocks.1.mlp.fc1", "'transformer.resblocks.1.mlp.c_fc'"),
    ("ln_postt", "'ln_post'"),
])
def test_misspelled_layer_coeffs_raise_naming_the_closest_layers(name, closest):
    """A name matching no layer would be silently ignored: it raises before the forward."""
    vit = _tiny_vit()
    with pytest.raises(ValueError, match=f"DaWinViT layer_coeffs: '{name}' matches no "
                                         f"layer of the model; closest: {closest}"):
        vit(torch.rand(2, 3, 16, 16), torch.tensor([0.5, 0.5]),
            layer_coeffs={name: torch.tensor([1.0, 0.0])})
    # A real name and a prefix of names are fine.
    with torch.no_grad():
        vit(torch.rand(2, 3, 16, 16), torch.tensor([0.5, 0.5]), layer_coeffs={
            "transformer.resblocks.1": torch.tensor([1.0, 0.0]), "conv1": torch.tensor([0, 1.])})


def test_misspelled_route_layers_raise_when_the_block_ends():
    """``route(..., layers=...)`` knows no model: its names are checked against the layers
    that ran under it."""
    from dawin_fast import dawinize

    models = [torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
              for _ in range(2)]
    merged = dawinize(models).module
    x = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"route\(layers=...\): '3' matches no layer of the "
                                         r"layers that ran under it; layer names look like '0'"):
        with route(torch.tensor([0.5, 0.5]), layers={"3": torch.tensor([1.0, 0.0])}):
            merged(x)
    with pytest.raises(ValueError, match=r"'encoder\.layerz' matches no layer.*closest"):
        with route(torch.tensor([0.5, 0.5]), layers={"encoder.layerz": torch.tensor([1.0, 0])}):
            with route(torch.tensor([0.5, 0.5])):
                pass  # a block where no layer ran checks nothing
            name_layers(merged, prefix="encoder.layers")
            try:
                merged(x)
            finally:
                name_layers(merged)
    with route(torch.tensor([0.5, 0.5]), layers={"2": torch.tensor([1.0, 0.0])}):
        merged(x)
