"""Feature bank that scales: save/load, memory modes (stored / on the fly), batched recording, bad files.

Reduced SD1.5 random checkpoint, 64 px (latent 8x8), 10 steps: small enough for 2 shared cores.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from host import new_executor, run_prompt, validate

STEPS = 10
LAYOUT = "sd15_reduced"


def _out(node_output, index=0):
    return node_output.args[index]


class Setup:
    """One model, prompts, inversion and banks shared by the tests of this module."""

    def __init__(self, models):
        import nodes

        self.nodes = nodes.NODE_CLASS_MAPPINGS
        self.model, self.clip, _ = models.load(LAYOUT)
        encode = nodes.CLIPTextEncode().encode
        self.empty = encode(self.clip, "")[0]
        self.positive = encode(self.clip, "a watercolor painting of a cat")[0]
        self.negative = encode(self.clip, "ugly, blurry, black, low res, unrealistic")[0]
        self.description = encode(self.clip, "a photo of a dog")[0]
        self.latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))}
        with torch.inference_mode():
            inversion = self.nodes["PnP_DDIMInversion"].execute(self.model, self.latent, self.empty, STEPS, 0)
        self.inversion = _out(inversion)
        self._banks = {}

    def bank(self, dtype="fp16", mode="stored", batch_size=1, fresh=False):
        """PnP Feature Bank's output (cached per settings unless ``fresh``)."""
        key = (dtype, mode, batch_size)
        if fresh or key not in self._banks:
            with torch.inference_mode():
                bank = _out(self.nodes["PnP_FeatureBank"].execute(
                    self.model, self.inversion, self.empty, "auto", "auto", 0.8, 0.5, dtype, batch_size, mode))
            if fresh:
                return bank
            self._banks[key] = bank
        return self._banks[key]

    def sample(self, bank):
        with torch.inference_mode():
            out = self.nodes["PnP_Sampler"].execute(self.model, self.positive, self.negative, bank, 7.5, 0.8, 0.5, 0,
                                                   "pnp-diffusers", "official")
        return _out(out)["samples"]

    def save(self, bank, prefix="test_bank", overwrite=False) -> str:
        return _out(self.nodes["PnP_SaveFeatures"].execute(bank, prefix, overwrite))

    def load(self, name, model=None, latent=None):
        return self.nodes["PnP_LoadFeatures"].execute(model or self.model, name, latent)

    def bank_path(self, name):
        import folder_paths

        return os.path.join(folder_paths.get_folder_paths("pnp_banks")[0], name)


@pytest.fixture(scope="module")
def setup(host, models):
    return Setup(models)


def _count_unet_rows(model):
    """Batch rows of every real UNet forward (a pre-hook on conv_in sees the rows ComfyUI actually runs)."""
    rows = []
    hook = model.model.diffusion_model.input_blocks[0][0].register_forward_pre_hook(
        lambda module, args: rows.append(args[0].shape[0]))
    return rows, hook


# ---------------------------------------------------------------- memory

def _site_geometry(unet, latent_hw, block, kind):
    """(channels, h, w) of a decoder site, from the UNet's own modules and the block's resolution."""
    ups_before = sum(1 for b in range(block) if type(unet.output_blocks[b][-1]).__name__ == "Upsample")
    levels = len(unet.channel_mult) - 1
    h, w = (d // 2 ** (levels - ups_before) for d in latent_hw)
    if kind == "resblock":
        return unet.output_blocks[block][0].out_layers[-1].out_channels, h, w
    return unet.output_blocks[block][1].transformer_blocks[0].attn1.to_q.in_features, h, w


def test_bank_stores_only_the_injected_steps_in_fp16_and_its_size_is_the_formula(setup):
    bank = setup.bank()
    unet = setup.model.model.diffusion_model
    # Leading steps only: int(N * tau) + 1 so that either threshold convention can use the bank.
    assert (bank.feature_steps, bank.attention_steps) == (int(STEPS * 0.8) + 1, int(STEPS * 0.5) + 1)
    expected = 0
    for b in bank.sites.resblocks:
        c, h, w = _site_geometry(unet, (8, 8), b, "resblock")
        assert tuple(bank.resblock[b].shape) == (bank.feature_steps, 1, c, h, w)
        expected += bank.feature_steps * c * h * w * 2
    for b, j in bank.sites.attention:
        c, h, w = _site_geometry(unet, (8, 8), b, "attention")
        assert tuple(bank.attention[(b, j)].shape) == (bank.attention_steps, 1, h * w, c)
        expected += bank.attention_steps * c * h * w * 2
    assert all(t.dtype == torch.float16 for t in list(bank.resblock.values()) + list(bank.attention.values()))
    assert all(t.device.type == "cpu" for t in bank.resblock.values())  # ComfyUI's intermediate device on CPU
    assert bank.nbytes == expected
    assert f"{expected} bytes" in bank.describe()
    on_the_fly = setup.bank(mode="on the fly")
    assert on_the_fly.nbytes == 0 and not on_the_fly.resblock and not on_the_fly.attention
    assert "0 feature bytes stored" in on_the_fly.describe()


# ---------------------------------------------------------------- on the fly

def test_on_the_fly_matches_stored_in_fp32_with_the_source_row_only_while_injecting(setup):
    stored = setup.bank(dtype="fp32")
    live = setup.bank(mode="on the fly")
    rows, hook = _count_unet_rows(setup.model)
    try:
        a = setup.sample(stored)
        stored_rows = list(rows)
        rows.clear()
        b = setup.sample(live)
        live_rows = list(rows)
    finally:
        hook.remove()
    injecting = max(int(STEPS * 0.8), int(STEPS * 0.5))
    assert stored_rows == [2] * STEPS
    assert live_rows == [3] * injecting + [2] * (STEPS - injecting)  # [source, uncond, cond], then [uncond, cond]
    diff = (a - b).abs().max().item()
    scale = a.abs().max().item()
    # The source row runs in a batch of 3 instead of 1: fp32 GEMM rounding (~3e-7 per UNet call here),
    # amplified by CFG 7.5 over the steps. Measured ~1e-4 on latents of magnitude ~8.
    assert diff <= 1e-4 * scale, (diff, scale)
    assert not torch.equal(a, setup.sample(setup.bank()))  # (the fp16 bank is a different, coarser thing)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_on_the_fly_matches_stored_with_negative_prompt_and_partial_strength(setup, host, strength):
    sampling = host.pack_module("pnp_hooks.sampling")
    schedule = host.pack_module("pnp_hooks.schedule")
    plan = schedule.InjectionPlan.from_thresholds(STEPS, 0.8, 0.5)
    alphas = schedule.negative_prompt_alphas(STEPS, "linear", 0.5)
    outs = []
    for bank in (setup.bank(dtype="fp32"), setup.bank(mode="on the fly")):
        with torch.inference_mode():
            outs.append(sampling.translate(setup.model, setup.positive, setup.negative, bank, 7.5, plan, "official",
                                           strength=strength, paper_negative=setup.description,
                                           negative_alphas=alphas))
    diff = (outs[0] - outs[1]).abs().max().item()
    assert diff <= 1e-4 * outs[0].abs().max().item(), diff


def _random_controlnet(layout: str):
    """A seeded random ControlNet for ``layout``, loaded by ComfyUI's own ControlNet loader."""
    import checkpoints
    import comfy.controlnet
    import comfy.ops
    from comfy.cldm.cldm import ControlNet

    torch.manual_seed(5)
    net = ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, **checkpoints.unet_config(layout))
    checkpoints._init_module_weights(net)
    with torch.no_grad():
        for zero_conv in list(net.zero_convs) + [net.middle_block_out]:
            zero_conv[0].weight.mul_(0.3)  # random instead of zero, so the control changes the result
    return comfy.controlnet.load_controlnet_state_dict({k: v.half() for k, v in net.state_dict().items()})


def test_on_the_fly_matches_stored_under_controlnet(setup):
    """The target rows get the ControlNet residuals, the source row zeros: as when the bank was recorded."""
    import nodes

    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        setup.positive, setup.negative, _random_controlnet(LAYOUT), hint, 1.0, 0.0, 1.0)[:2]
    stored, live = setup.bank(dtype="fp32"), setup.bank(mode="on the fly")
    outs = []
    for bank in (stored, live):
        with torch.inference_mode():
            outs.append(_out(setup.nodes["PnP_Sampler"].execute(
                setup.model, positive, negative, bank, 7.5, 0.8, 0.5, 0, "pnp-diffusers", "official"))["samples"])
    uncontrolled = setup.sample(stored)
    scale = outs[0].abs().max().item()
    assert (outs[0] - uncontrolled).abs().max().item() > 0.1 * scale  # the control does act
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-4 * scale


def test_on_the_fly_equals_stored_up_to_rounding_in_fp64(setup, host, models):
    """In float64 the batch-rounding difference vanishes: the mechanism itself is exact."""
    import nodes

    sampling = host.pack_module("pnp_hooks.sampling")
    schedule = host.pack_module("pnp_hooks.schedule")
    patcher = host.pack_module("pnp_hooks.patcher")
    common = host.pack_module("nodes.common")
    model = nodes.CheckpointLoaderSimple().load_checkpoint(models.checkpoint(LAYOUT))[0]  # a private copy
    model.model.diffusion_model.double()
    model.model.diffusion_model.dtype = torch.float64
    with torch.inference_mode():
        inversion = sampling.invert(model, setup.latent["samples"], setup.empty, STEPS, 0)
        sites = common.resolve_layers(patcher.model_facts(model), "auto", "auto")
        feature_steps, attention_steps = common.recorded_steps(STEPS, 0.8, 0.5)
        stored = sampling.record_bank(model, inversion, setup.empty, sites, feature_steps, attention_steps,
                                      torch.float64, 1)
        live = sampling.record_bank(model, inversion, setup.empty, sites, feature_steps, attention_steps,
                                    torch.float64, 1, on_the_fly=True)
        plan = schedule.InjectionPlan.from_thresholds(STEPS, 0.8, 0.5)
        a = sampling.translate(model, setup.positive, setup.negative, stored, 7.5, plan, "official")
        b = sampling.translate(model, setup.positive, setup.negative, live, 7.5, plan, "official")
    del model
    assert stored.attention[(4, 0)].dtype == torch.float64
    # The UNet output is cast to fp32 by ComfyUI: at most an fp32 rounding flip is left (measured: 0.0).
    assert (a - b).abs().max().item() <= 1e-6 * a.abs().max().item()


def test_on_the_fly_refuses_a_source_prompt_it_cannot_batch(setup):
    import nodes

    with_area = nodes.ConditioningSetArea().append(setup.empty, 32, 32, 0, 0, 1.0)[0]
    with pytest.raises(ValueError, match="area"):
        setup.nodes["PnP_FeatureBank"].execute(setup.model, setup.inversion, with_area, "auto", "auto", 0.8, 0.5,
                                               "fp16", 1, "on the fly")


# ---------------------------------------------------------------- batched recording

def test_recording_in_batches_gives_the_same_bank(setup):
    one = setup.bank(dtype="fp32", batch_size=1)
    batched = setup.bank(dtype="fp32", batch_size=4)  # 9 recorded steps: calls of 4, 4, 1 rows
    rows, hook = _count_unet_rows(setup.model)
    try:
        setup.bank(dtype="fp32", batch_size=4, fresh=True)
        calls_of_4 = list(rows)
        rows.clear()
        automatic = setup.bank(dtype="fp32", batch_size=0, fresh=True)
    finally:
        hook.remove()
    assert calls_of_4 == [4, 4, 1]
    assert rows == [9]  # auto: up to 16 timesteps a call while ComfyUI's memory estimate fits (CPU RAM here)
    assert all(torch.equal(automatic.attention[k], setup.bank(dtype="fp32", batch_size=9).attention[k])
               for k in automatic.attention)
    worst = 0.0
    for key in one.resblock:
        assert one.resblock[key].shape == batched.resblock[key].shape
        worst = max(worst, (one.resblock[key] - batched.resblock[key]).abs().max().item()
                    / one.resblock[key].abs().max().item())
    for key in one.attention:
        assert one.attention[key].shape == batched.attention[key].shape
        worst = max(worst, (one.attention[key] - batched.attention[key]).abs().max().item()
                    / one.attention[key].abs().max().item())
    # fp32 GEMM rounding of a batch of 4 against 1, relative to each tensor's magnitude: measured ~2e-6 here
    # (the bound leaves room for other CPUs' kernels; a wrong step or row would be of order 1).
    assert worst <= 1e-4, worst


# ---------------------------------------------------------------- save / load

def test_pack_registers_the_bank_folder_for_safetensors_only(setup):
    import folder_paths

    paths, extensions = folder_paths.folder_names_and_paths["pnp_banks"]
    assert os.path.join(folder_paths.models_dir, "pnp_banks") in paths
    assert extensions == {".safetensors"}


@pytest.mark.parametrize("mode", ["stored", "on the fly"])
def test_save_load_sample_gives_exactly_the_in_memory_result(setup, mode):
    import folder_paths

    bank = setup.bank(mode=mode)
    name = setup.save(bank, prefix=f"exact_{mode.replace(' ', '_')}")
    assert name in folder_paths.get_filename_list("pnp_banks")
    assert name in setup.nodes["PnP_LoadFeatures"].GET_SCHEMA().inputs[1].options
    loaded, trajectory = setup.load(name, latent=setup.latent).args
    assert loaded.on_the_fly == bank.on_the_fly and loaded.sites == bank.sites
    assert (loaded.feature_steps, loaded.attention_steps, loaded.branches, loaded.storage_dtype) == (
        bank.feature_steps, bank.attention_steps, bank.branches, bank.storage_dtype)
    assert trajectory == loaded.trajectory and loaded.trajectory.model == bank.trajectory.model
    assert loaded.trajectory.timesteps == bank.trajectory.timesteps
    assert torch.equal(loaded.trajectory.latents, bank.trajectory.latents)
    for key, t in list(bank.resblock.items()) + list(bank.attention.items()):
        stored = loaded.resblock[key] if isinstance(key, int) else loaded.attention[key]
        assert stored.dtype == t.dtype and torch.equal(stored, t)
    assert (setup.sample(loaded) - setup.sample(bank)).abs().max().item() == 0.0


def test_save_never_overwrites_unless_asked(setup):
    bank = setup.bank()
    first, second = setup.save(bank, "counter/bank"), setup.save(bank, "counter/bank")
    assert (first, second) == ("counter/bank_00001_.safetensors", "counter/bank_00002_.safetensors")
    fixed = setup.save(bank, "counter/fixed.safetensors", overwrite=True)
    mtime = os.stat(setup.bank_path(fixed)).st_mtime_ns
    assert setup.save(setup.bank(mode="on the fly"), "counter/fixed", overwrite=True) == fixed
    assert os.stat(setup.bank_path(fixed)).st_mtime_ns >= mtime
    assert _out(setup.load(fixed)).on_the_fly  # replaced by the on-the-fly bank
    leftovers = [f for f in os.listdir(os.path.dirname(setup.bank_path(fixed))) if f.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("name", ["../escape", "../../etc/passwd", "sub/../../x", "/tmp/abs_bank",
                                  "C:\\banks\\x", "a\\..\\b", "", "  "])
def test_save_refuses_names_that_leave_the_folder(setup, name):
    import folder_paths

    folder = folder_paths.get_folder_paths("pnp_banks")[0]
    before = sorted(os.listdir(folder))
    with pytest.raises(ValueError, match="absolute|'\\.\\.'|not allowed|empty"):
        setup.save(setup.bank(), name)
    assert sorted(os.listdir(folder)) == before


@pytest.mark.parametrize("name", ["../escape.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_load_refuses_names_that_leave_the_folder(setup, name):
    with pytest.raises(ValueError, match="absolute|'\\.\\.'"):
        setup.load(name)


def test_executor_rejects_a_traversal_name_and_runs_save_then_load(setup, host, models):
    ckpt = models.checkpoint(LAYOUT)
    bad = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "PnP_LoadFeatures", "inputs": {"model": ["1", 0], "bank_name": "../x.safetensors"}},
        "3": {"class_type": "PnP_SaveFeatures", "inputs": {"features": ["2", 0], "filename_prefix": "x",
                                                           "overwrite": False}},
    }
    valid = validate(bad)
    assert not valid[0]
    assert "'..'" in json.dumps(valid[3]["2"]["errors"])
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "PnP_DDIMInversion", "inputs": {"model": ["1", 0], "latent": ["3", 0],
                                                            "conditioning": ["2", 0], "steps": 4,
                                                            "inversion_steps": 0}},
        "5": {"class_type": "PnP_FeatureBank", "inputs": {
            "model": ["1", 0], "inversion": ["4", 0], "conditioning": ["2", 0], "resblock_layers": "auto",
            "attention_layers": "auto", "feature_injection": 0.8, "attention_injection": 0.5, "bank_dtype": "fp16",
            "batch_size": 2, "mode": "stored"}},
        "6": {"class_type": "PnP_SaveFeatures", "inputs": {"features": ["5", 0], "filename_prefix": "graph/bank",
                                                           "overwrite": True}},
    }
    result = run_prompt(prompt, new_executor())
    assert result.success, result.error()
    assert result.outputs["6"]["text"][0].startswith("graph/bank.safetensors: ")
    load = {
        "1": prompt["1"], "2": prompt["2"], "3": prompt["3"],
        "7": {"class_type": "PnP_LoadFeatures", "inputs": {"model": ["1", 0], "bank_name": "graph/bank.safetensors",
                                                           "latent": ["3", 0]}},
        "8": {"class_type": "PnP_Sampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "features": ["7", 0], "cfg": 7.5,
            "feature_injection": 0.8, "attention_injection": 0.5, "steps": 4, "threshold_convention": "pnp-diffusers",
            "final_step": "official"}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "pnp_loaded"}},
    }
    result = run_prompt(load, new_executor())
    assert result.success, result.error()
    assert result.outputs["9"]["latents"]


# ---------------------------------------------------------------- bad files

@pytest.fixture
def saved(setup):
    """A fresh stored bank file: (name, path, bytes)."""
    name = setup.save(setup.bank(), "bad/bank")
    path = setup.bank_path(name)
    with open(path, "rb") as f:
        return name, path, f.read()


def _rewrite(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _header(data):
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8:8 + n])


@pytest.fixture
def no_tensor_reads(host, monkeypatch):
    """Fails the test if a bank's tensors are read (the checks must stop before)."""
    bank_file = host.pack_module("pnp_hooks.bank_file")

    def forbidden(*args, **kwargs):
        raise AssertionError("tensors were loaded although the header check should have refused the file")

    monkeypatch.setattr(bank_file, "load_file", forbidden)


def test_truncated_file_is_refused_before_loading(setup, saved, no_tensor_reads):
    name, path, data = saved
    _rewrite(path, data[:-100])
    with pytest.raises(ValueError, match="truncated.*Nothing was loaded"):
        setup.load(name)
    n, _ = _header(data)
    _rewrite(path, data[:8 + n // 2])
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        setup.load(name)


def test_tampered_tensor_bytes_are_caught_by_the_content_hash(setup, saved):
    name, path, data = saved
    flipped = bytearray(data)
    flipped[-7] ^= 0x40
    _rewrite(path, bytes(flipped))
    with pytest.raises(ValueError, match="content hash.*Nothing was loaded"):
        setup.load(name)


def test_tampered_metadata_is_refused(setup, saved, host):
    name, path, data = saved
    n, header = _header(data)
    meta = json.loads(header["__metadata__"]["comfyui_pnp"])
    meta["attention_steps"] = 3  # claims fewer steps than the tensors hold
    header["__metadata__"]["comfyui_pnp"] = json.dumps(meta, sort_keys=True)
    text = json.dumps(header).encode()
    _rewrite(path, len(text).to_bytes(8, "little") + text + data[8 + n:])
    with pytest.raises(ValueError, match="does not allow"):
        setup.load(name)
    meta["attention_steps"] = 6
    meta["model"]["fingerprint"] = setup.bank().trajectory.model.fingerprint  # unchanged identity...
    meta["timesteps"][0] = 991  # ...but another schedule step: only the hash can tell
    header["__metadata__"]["comfyui_pnp"] = json.dumps(meta, sort_keys=True)
    text = json.dumps(header).encode()
    _rewrite(path, len(text).to_bytes(8, "little") + text + data[8 + n:])
    with pytest.raises(ValueError, match="content hash"):
        setup.load(name)


def test_files_that_are_not_banks_are_refused(setup, tmp_path, no_tensor_reads):
    import folder_paths

    folder = folder_paths.get_folder_paths("pnp_banks")[0]
    png = os.path.join(folder, "picture.safetensors")
    _rewrite(png, b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(ValueError, match="not a safetensors file"):
        setup.load("picture.safetensors")
    pickled = os.path.join(folder, "pickled.safetensors")
    with open(pickled, "wb") as f:
        pickle.dump({"resblock.4": [1.0, 2.0]}, f)
    with pytest.raises(ValueError, match="not a safetensors file"):
        setup.load("pickled.safetensors")
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 4)}, os.path.join(folder, "lora.safetensors"))
    with pytest.raises(ValueError, match="not a comfyui-pnp feature bank"):
        setup.load("lora.safetensors")
    with pytest.raises(ValueError, match="safetensors only"):
        setup.load("bank.pt")


def test_a_bank_for_another_model_size_or_schedule_names_what_differs(setup, models, host, no_tensor_reads):
    import comfy_extras.nodes_model_advanced as advanced

    name = setup.save(setup.bank(), "other/bank")
    sd2 = models.load("sd2_reduced")[0]
    with pytest.raises(ValueError, match="model family: SD15 in the file, SD20 in the MODEL connected.*Nothing was"):
        setup.load(name, model=sd2)
    with pytest.raises(ValueError, match=r"latent size: 64x64 px \[4, 8, 8\] in the file, 128x128 px"):
        setup.load(name, latent={"samples": torch.zeros(1, 4, 16, 16)})
    zsnr = advanced.ModelSamplingDiscrete().patch(setup.model, "eps", True)[0]
    with pytest.raises(ValueError, match="noise schedule"):
        setup.load(name, model=zsnr)
    # Another checkpoint of the same family: the weights fingerprint differs.
    bank = setup.bank()
    other = dataclasses.replace(bank.trajectory.model, fingerprint="0123456789abcdef")
    foreign = dataclasses.replace(bank, trajectory=dataclasses.replace(bank.trajectory, model=other))
    name = setup.save(foreign, "other/foreign")
    with pytest.raises(ValueError, match="weights fingerprint: 0123456789abcdef in the file, [0-9a-f]{16} in the"):
        setup.load(name)


def test_new_nodes_are_registered_with_tooltips(setup):
    import nodes

    for node_id in ("PnP_SaveFeatures", "PnP_LoadFeatures"):
        schema = nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("PnP ")
        assert schema.category == "sampling/plug-and-play" and schema.description
        for item in schema.inputs + schema.outputs:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"
    assert nodes.NODE_CLASS_MAPPINGS["PnP_SaveFeatures"].GET_SCHEMA().is_output_node
    mode = next(i for i in nodes.NODE_CLASS_MAPPINGS["PnP_FeatureBank"].GET_SCHEMA().inputs if i.id == "mode")
    assert mode.options == ["stored", "on the fly"] and mode.default == "stored" and mode.tooltip
