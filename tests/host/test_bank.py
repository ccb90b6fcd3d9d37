"""Feature bank that scales, on the real host: memory modes (stored / on the fly), batched recording, save/load.

Reduced SD1.5 random checkpoint, 64 px (latent 8x8), 10 steps: small enough for 2 shared cores. Bank files
on their own (names, damaged and forged files) are unit-tested in unit/test_bank_file.py.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from comfy_host import new_executor, run_prompt, validate
from harness import Prompt, Translation, UNetRows, encode, latent_previews, run_node, translation_prompt

STEPS = 10
LAYOUT = "sd15_reduced"


@pytest.fixture(scope="module")
def pnp(models):
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    t = Translation.make(models, LAYOUT, latent=latent, steps=STEPS, prompt="a watercolor painting of a cat")
    t.description = encode(t.clip, "a photo of a dog")
    return t


def _save(bank, prefix="test_bank", overwrite=False) -> str:
    return run_node("PnP_SaveFeatures", features=bank, filename_prefix=prefix, overwrite=overwrite)[0]


def _load(pnp, name, model=None, latent=None) -> tuple:
    return run_node("PnP_LoadFeatures", model=model or pnp.model, bank_name=name, latent=latent)


def _bank_path(name):
    import folder_paths

    return os.path.join(folder_paths.get_folder_paths("pnp_banks")[0], name)


# ---------------------------------------------------------------- memory

def test_bank_stores_only_the_injected_steps_in_fp16_and_its_size_is_the_pack_formula(pnp, host):
    layers, patcher = host.pack_module("pnp_hooks.layers"), host.pack_module("pnp_hooks.patcher")
    bank = pnp.record(bank_dtype="fp16")
    # Leading steps only: int(N * tau) + 1 so that either threshold convention can use the bank.
    assert (bank.feature_steps, bank.attention_steps) == (int(STEPS * 0.8) + 1, int(STEPS * 0.5) + 1)
    layout = patcher.model_facts(pnp.model).layout
    shapes = layers.bank_shapes(layout, bank.sites, (8, 8), bank.feature_steps, bank.attention_steps, 1)
    recorded = {f"resblock.{b}": t for b, t in bank.stored["resblock"].items()}
    recorded.update({f"attention.{b}.{j}": t for (b, j), t in bank.stored["attention"].items()})
    assert {name: tuple(t.shape) for name, t in recorded.items()} == shapes  # what the UNet really produced
    assert all(t.dtype == torch.float16 and t.device.type == "cpu" for t in recorded.values())  # intermediate device
    expected = layers.bank_nbytes(layout, bank.sites, (8, 8), bank.feature_steps, bank.attention_steps, 1, 2)
    assert bank.nbytes == expected and f"{expected} bytes" in bank.describe()
    # What the node shows: 9 + 6 of 10 steps, ResBlock 4 and the 8 attention blocks 4-11 (the paper's layers).
    assert bank.summary().splitlines() == [f"9 + 6 of 10 steps, 9 sites, {expected / 1e6:.1f} MB fp16",
                                           "ResBlock 4, attention 4-11:0", "inverted guidance image, 64x64 px"]
    on_the_fly = pnp.record(mode="on the fly")
    assert on_the_fly.nbytes == 0 and not on_the_fly.stored.get("resblock") and not on_the_fly.stored.get("attention")
    assert "0 feature bytes stored" in on_the_fly.describe()
    assert on_the_fly.summary().startswith("on the fly, 10 steps, 9 sites: nothing stored")


# ---------------------------------------------------------------- on the fly

def test_on_the_fly_equals_stored_and_runs_the_source_pass_alone_only_while_injecting(pnp):
    stored, live = pnp.record(), pnp.record(mode="on the fly")
    with UNetRows() as counter:
        a = pnp.sample(features=stored)
    stored_rows = counter.rows
    with UNetRows() as counter:
        b = pnp.sample(features=live)
    injecting = max(int(STEPS * 0.8), int(STEPS * 0.5))
    assert stored_rows == [2] * STEPS
    assert counter.rows == [1, 2] * injecting + [2] * (STEPS - injecting)  # [source], [uncond, cond]
    # The live source pass is the bank's own (batch 1, same inputs): the results are identical.
    assert torch.equal(a, b), (a - b).abs().max().item()
    assert not torch.equal(a, pnp.sample(features=pnp.record(bank_dtype="fp16")))  # fp16 is coarser


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_on_the_fly_equals_stored_with_negative_prompt_and_partial_strength(pnp, strength):
    outs = [pnp.sample(features=bank, injection_strength=strength, negative_prompt=pnp.description,
                       negative_alpha=0.5, negative_schedule="linear")
            for bank in (pnp.record(), pnp.record(mode="on the fly"))]
    assert torch.equal(outs[0], outs[1]), (outs[0] - outs[1]).abs().max().item()


def test_on_the_fly_equals_stored_under_controlnet(pnp, models, host):
    """The target rows get the ControlNet residuals; the source pass none, as when the bank was recorded."""
    import extra_models

    name = extra_models.ensure(host.models_dir / "controlnet", extra_models.controlnet_name(),
                               extra_models.build_controlnet)
    control = run_node("ControlNetLoader", control_net_name=name)[0]
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    positive, negative = run_node("ControlNetApplyAdvanced", positive=pnp.positive, negative=pnp.negative,
                                  control_net=control, image=hint, strength=1.0, start_percent=0.0,
                                  end_percent=1.0)[:2]
    outs = [pnp.sample(features=bank, positive=positive, negative=negative)
            for bank in (pnp.record(), pnp.record(mode="on the fly"))]
    uncontrolled = pnp.sample()
    scale = outs[0].abs().max().item()
    assert (outs[0] - uncontrolled).abs().max().item() > 1e-3 * scale  # the control does act
    assert torch.equal(outs[0], outs[1])


def test_on_the_fly_refuses_a_source_prompt_it_cannot_run_alone(pnp):
    with_area = run_node("ConditioningSetArea", conditioning=pnp.empty, width=32, height=32, x=0, y=0,
                         strength=1.0)[0]
    with pytest.raises(ValueError, match="area"):
        pnp.record(conditioning=with_area, mode="on the fly")


# ---------------------------------------------------------------- batched recording

def test_recording_in_batches_gives_the_same_bank(pnp, host):
    one = pnp.record(batch_size=1)
    with UNetRows() as counter:
        batched = run_node("PnP_FeatureBank", model=pnp.model, inversion=pnp.inversion, conditioning=pnp.empty,
                           bank_dtype="fp32", batch_size=4)[0]  # 9 recorded steps: calls of 4, 4, 1 rows
    assert counter.rows == [4, 4, 1]
    host.progress_events.clear()
    with UNetRows() as counter, latent_previews():
        automatic = run_node("PnP_FeatureBank", model=pnp.model, inversion=pnp.inversion, conditioning=pnp.empty,
                             bank_dtype="fp32", batch_size=0)[0]
    assert counter.rows == [9]  # auto at 64 px: up to 16 timesteps a call (pnp_hooks/batching.py)
    # progress moves once per recorded timestep, whatever the batches
    assert [value for value, total, _ in host.progress_events] == list(range(1, 10))
    worst = 0.0
    for other in (batched, automatic):
        for store in ("resblock", "attention"):
            for key, t in one.stored[store].items():
                assert t.shape == other.stored[store][key].shape
                worst = max(worst, (t - other.stored[store][key]).abs().max().item() / t.abs().max().item())
    # fp32 GEMM rounding of a batch of 4 against 1, relative to each tensor's magnitude: measured ~2e-6 here
    # (the bound leaves room for other CPUs' kernels; a wrong step or row would be of order 1).
    assert worst <= 1e-4, worst


# ---------------------------------------------------------------- save / load

def test_pack_registers_the_bank_folder_for_safetensors_only(host):
    import folder_paths

    paths, extensions = folder_paths.folder_names_and_paths["pnp_banks"]
    assert os.path.join(folder_paths.models_dir, "pnp_banks") in paths
    assert extensions == {".safetensors"}


@pytest.mark.parametrize("mode", ["stored", "on the fly"])
def test_save_load_sample_gives_exactly_the_in_memory_result(pnp, mode):
    import folder_paths
    import nodes

    bank = pnp.record(bank_dtype="fp16", mode=mode)
    name = _save(bank, prefix=f"exact_{mode.replace(' ', '_')}")
    assert name in folder_paths.get_filename_list("pnp_banks")
    load_schema = nodes.NODE_CLASS_MAPPINGS["PnP_LoadFeatures"].GET_SCHEMA()
    assert name in next(i for i in load_schema.inputs if i.id == "bank_name").options
    loaded, trajectory = _load(pnp, name, latent=pnp.latent)
    assert loaded.mode == bank.mode and loaded.sites == bank.sites
    assert (loaded.feature_steps, loaded.attention_steps, loaded.branches, loaded.storage_dtype) == (
        bank.feature_steps, bank.attention_steps, bank.branches, bank.storage_dtype)
    assert trajectory == loaded.trajectory and loaded.trajectory.model == bank.trajectory.model
    assert loaded.trajectory.timesteps == bank.trajectory.timesteps
    assert torch.equal(loaded.trajectory.latents, bank.trajectory.latents)
    for kind, key, t in [(kind, key, t) for kind, store in bank.stored.items() for key, t in store.items()]:
        stored = loaded.stored[kind][key]
        assert stored.dtype == t.dtype and torch.equal(stored, t)
    assert torch.equal(pnp.sample(features=loaded), pnp.sample(features=bank))


def test_save_never_overwrites_unless_asked(pnp):
    bank = pnp.record(bank_dtype="fp16")
    first, second = _save(bank, "counter/bank"), _save(bank, "counter/bank")
    assert (first, second) == ("counter/bank_00001_.safetensors", "counter/bank_00002_.safetensors")
    fixed = _save(bank, "counter/fixed.safetensors", overwrite=True)
    mtime = os.stat(_bank_path(fixed)).st_mtime_ns
    assert _save(pnp.record(mode="on the fly"), "counter/fixed", overwrite=True) == fixed
    assert os.stat(_bank_path(fixed)).st_mtime_ns >= mtime
    assert _load(pnp, fixed)[0].mode == "on the fly"  # replaced by the on-the-fly bank
    leftovers = [f for f in os.listdir(os.path.dirname(_bank_path(fixed))) if f.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("name", ["../escape.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_load_refuses_names_that_leave_the_folder(pnp, name):
    with pytest.raises(ValueError, match="absolute|'\\.\\.'"):
        _load(pnp, name)


def test_executor_rejects_a_traversal_name_and_runs_save_then_load(host, models):
    ckpt = models.checkpoint(LAYOUT)
    bad = Prompt()
    loader = bad.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    loaded = bad.add("PnP_LoadFeatures", model=loader[0], bank_name="../x.safetensors")
    bad.add("PnP_SaveFeatures", features=loaded[0], filename_prefix="x")
    valid = validate(bad.api)
    assert not valid[0]
    assert "'..'" in json.dumps(valid[3][loaded.node_id]["errors"])

    save, refs = translation_prompt(ckpt, steps=4, bank={"batch_size": 2})
    for node in ("sampler", "output"):
        del save.api[refs[node].node_id]
    saver = save.add("PnP_SaveFeatures", features=refs["bank"][0], filename_prefix="graph/bank", overwrite=True)
    result = run_prompt(save.api, new_executor())
    assert result.success, result.error()
    summary = result.outputs[refs["bank"].node_id]["text"][0]  # shown on PnP Feature Bank
    assert summary.startswith("4 + 3 of 4 steps, 9 sites, ") and " MB fp16\n" in summary, summary
    assert result.outputs[saver.node_id]["text"][0].startswith("saved as graph/bank.safetensors\n")

    load = Prompt()
    ckpt_ref = load.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    empty = load.add("CLIPTextEncode", clip=ckpt_ref[1], text="")
    latent = load.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    bank = load.add("PnP_LoadFeatures", model=ckpt_ref[0], bank_name="graph/bank.safetensors", latent=latent[0])
    sampled = load.add("PnP_Sampler", model=ckpt_ref[0], positive=empty[0], negative=empty[0], features=bank[0],
                       steps=4)
    latents = load.add("SaveLatent", samples=sampled[0], filename_prefix="pnp_loaded")
    result = run_prompt(load.api, new_executor())
    assert result.success, result.error()
    assert result.outputs[latents.node_id]["latents"]
    assert result.outputs[bank.node_id]["text"][0] == f"graph/bank.safetensors\n{summary}"  # the same bank


def test_a_bank_for_another_model_size_or_schedule_names_what_differs(pnp, models, host):
    import dataclasses

    name = _save(pnp.record(bank_dtype="fp16"), "other/bank")
    sd2 = models.load("sd2_reduced")[0]
    with pytest.raises(ValueError, match="model family: SD15 in the file, SD20 in the MODEL connected.*Nothing was"):
        _load(pnp, name, model=sd2)
    with pytest.raises(ValueError, match=r"latent size: 64x64 px \[4, 8, 8\] in the file, 128x128 px"):
        _load(pnp, name, latent={"samples": torch.zeros(1, 4, 16, 16)})
    zsnr = run_node("ModelSamplingDiscrete", model=pnp.model, sampling="eps", zsnr=True)[0]
    with pytest.raises(ValueError, match="noise schedule"):
        _load(pnp, name, model=zsnr)
    # Another checkpoint of the same family: the weights fingerprint differs.
    bank = pnp.record(bank_dtype="fp16")
    other = dataclasses.replace(bank.trajectory.model, fingerprint="0123456789abcdef")
    foreign = dataclasses.replace(bank, trajectory=dataclasses.replace(bank.trajectory, model=other))
    name = _save(foreign, "other/foreign")
    with pytest.raises(ValueError, match="weights fingerprint: 0123456789abcdef in the file, [0-9a-f]{16} in the"):
        _load(pnp, name)
