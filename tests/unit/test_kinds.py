"""Kinds of site are keys: a kind a family declares (here a third one, in the test only) flows through the
layer specs, the bank's shapes, recording, the stored source and injection without any change to the core."""
from __future__ import annotations

import dataclasses

import torch

from pure import pure

layers, injection, sources, schedule = pure("layers"), pure("injection"), pure("sources"), pure("schedule")
bank, unet = pure("bank"), pure("families.unet")

# SD 1.5's decoder (as in test_layers); the new kind lives where attention does, injected with its threshold.
SD15 = unet.UNetLayout(
    has_resblock=(True,) * 12, transformer_depth=(0, 0, 0) + (1,) * 9,
    resblock_channels=(1280,) * 6 + (640,) * 3 + (320,) * 3,
    attention_channels=(0, 0, 0) + (1280,) * 3 + (640,) * 3 + (320,) * 3,
    downsamplings=(3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0))
VALUES = dataclasses.replace(unet.ATTENTION, name="attn_v", input="value_layers", file_key="attn_v",
                             plural="attention values", short="values", views=())
KINDS = unet.KINDS + (VALUES,)


def test_a_kind_declared_by_a_family_alone_is_read_recorded_stored_and_injected():
    sites = layers.resolve_sites({"resblock": "4", "attention": "4", "attn_v": "5-6, 5"}, SD15, KINDS)
    assert sites["attn_v"] == ((5, 0), (6, 0)) and sites.count == 4
    assert sites.describe() == "ResBlocks [4], self-attention [4:0], attention values [5:0, 6:0]"
    assert sites.compact() == "ResBlock 4, attention 4:0, values 5-6:0"
    shapes = layers.bank_shapes(SD15, sites, (8, 8), 3, 2, 1)
    assert shapes == {"resblock.4": (3, 1, 1280, 2, 2), "attention.4.0": (2, 1, 4, 1280),
                      "attn_v.5.0": (2, 1, 4, 1280), "attn_v.6.0": (2, 1, 16, 640)}

    recorder = injection.Recorder(sites, 3, 2, bank.SOURCE_SINGLE)
    for step in range(3):
        call = recorder.step_context([step], None).plan_call([0], 1)
        for kind, kind_sites in sites.items():
            for site in kind_sites:
                shape = shapes[kind.tensor_name(site)][2:]
                tensor = torch.full((1, *shape), float(10 * step + kind_sites.index(site)))
                assert call.at(kind, site, tensor, (2, 2)) is tensor
    source = sources.StoredSource(recorder.build(), bank.SOURCE_SINGLE)
    assert {k: set(t) for k, t in source.stored.items()} == {"resblock": {4}, "attention": {(4, 0)},
                                                           "attn_v": {(5, 0), (6, 0)}}
    assert source.stored["attn_v"][(6, 0)].shape == (2, 1, 16, 640)

    injector = injection.Injector(sites, source, schedule.InjectionPlan(3, 3, 1), (3, 2))
    late = injector.step_context([1], None)  # past the attention threshold: values follow it
    assert dict(late.injects) == {"resblock": True, "attention": False, "attn_v": False}
    call = injector.step_context([0], None).plan_call([0], 1)
    target = torch.zeros(1, 16, 640)
    assert torch.equal(call.at(VALUES, (6, 0), target, (4, 4)), torch.full((1, 16, 640), 1.0))
    assert call.at(VALUES, (7, 0), target, (4, 4)) is target  # a site the bank does not hold
