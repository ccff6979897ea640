"""``converters.keymap``: the rule rows and block tables the diffusers converters share, and
how a state dict is consumed through them (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

from converters.errors import ArchitectureError, KeyMismatchError, NonFiniteTensorError
from converters.keymap import (
    CONV,
    LINEAR,
    attention_rules,
    flax_module_path,
    layer_rules,
    map_tensors,
    resnet_rules,
)
from converters.readers import TensorTable


def test_flax_module_path_joins_list_indices_to_their_list():
    assert flax_module_path("decoder.up_blocks.0.resnets.1.norm1") == (
        "decoder",
        "up_blocks_0",
        "resnets_1",
        "norm1",
    )
    assert flax_module_path("mid_block.attentions.0.to_out.0") == (
        "mid_block",
        "attentions_0",
        "to_out_0",
    )
    assert flax_module_path("conv_in") == ("conv_in",)


def test_layer_rules_name_leaves_and_legacy_aliases():
    rules = layer_rules("a.to_q", LINEAR, legacy="a.query")
    assert [(r.torch_key, r.flax_path, r.aliases) for r in rules] == [
        ("a.to_q.weight", ("params", "a", "to_q", "kernel"), ("a.query.weight",)),
        ("a.to_q.bias", ("params", "a", "to_q", "bias"), ("a.query.bias",)),
    ]


def test_resnet_rules_time_embedding_and_shortcut():
    unet = [r.torch_key for r in resnet_rules("r", (4, 8), time_embedding=True)]
    vae = [r.torch_key for r in resnet_rules("r", (8, 8), time_embedding=False)]
    assert unet == [
        f"r.{m}.{p}"
        for m in ("norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut")
        for p in ("weight", "bias")
    ]
    assert vae == [f"r.{m}.{p}" for m in ("norm1", "conv1", "norm2", "conv2") for p in ("weight", "bias")]


def test_attention_rules_accept_pre_015_names():
    rules = attention_rules("m", group_norm=False)
    assert {r.torch_key: r.aliases for r in rules if r.torch_key.endswith("weight")} == {
        "m.to_q.weight": ("m.query.weight",),
        "m.to_k.weight": ("m.key.weight",),
        "m.to_v.weight": ("m.value.weight",),
        "m.to_out.0.weight": ("m.proj_attn.weight",),
    }
    assert [r.torch_key for r in attention_rules("m", group_norm=True)][:2] == [
        "m.group_norm.weight",
        "m.group_norm.bias",
    ]


def test_map_tensors_lays_out_aliases_and_lists_missing_keys():
    conv = np.arange(2 * 3 * 1 * 1, dtype=np.float32).reshape(2, 3, 1, 1)
    table = TensorTable({"c.weight": conv, "a.query.weight": conv, "a.query.bias": np.ones(2)}, "f")
    rules = layer_rules("c", CONV) + layer_rules("a.to_q", LINEAR, legacy="a.query")
    values = map_tensors(table, rules, "f")
    assert values.keys() == {
        "['params']['c']['kernel']",
        "['params']['a']['to_q']['kernel']",
        "['params']['a']['to_q']['bias']",
    }
    np.testing.assert_array_equal(values["['params']['c']['kernel']"], conv.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(values["['params']['a']['to_q']['kernel']"], conv[:, :, 0, 0].T)
    with pytest.raises(KeyMismatchError, match=r"f: .*missing keys: c\.bias$"):
        table.finish()


def test_map_tensors_refuses_wrong_rank_and_non_finite_naming_the_key():
    rules = layer_rules("c", CONV)
    with pytest.raises(ArchitectureError) as info:
        map_tensors(TensorTable({"c.weight": np.zeros((2, 3))}, "f"), rules, "f")
    assert str(info.value) == "f: c.weight: conv weight must be 4-D, got shape (2, 3)"
    with pytest.raises(NonFiniteTensorError, match=r"^f: tensor c\.bias holds NaN"):
        map_tensors(
            TensorTable({"c.weight": np.zeros((1, 1, 1, 1)), "c.bias": np.array([np.inf])}, "f"),
            rules,
            "f",
        )
