"""Hostile and careless input on the real host: refused at queue time where no model is needed, never a silent
NaN image, bank files that leak nothing, and a PnP Feature Bank that stops within one UNet call of Cancel.

The grammar, names and file checks themselves are unit-tested (unit/test_layers.py, unit/test_bank_file.py);
here they are seen the way a user meets them, through ComfyUI's validation and executor.
"""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from comfy_host import new_executor, run_prompt, validate
from harness import Translation, UNetRows, executed_nodes, run_node, translation_prompt

NAN = math.nan
STEPS = 6


@pytest.fixture(scope="module")
def pnp(models):
    return Translation.make(models, latent=torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)),
                            steps=STEPS)


def _errors(node_errors: dict, node_id: str) -> str:
    return json.dumps(node_errors.get(node_id, {}).get("errors", []))


@pytest.mark.parametrize("node, inputs, message", [
    ("bank", {"attention_layers": "0-99999999"}, "up to 4 digits"),
    ("bank", {"resblock_layers": "4:0"}, "no transformer index"),
    ("bank", {"attention_layers": "x" * 10000}, "Cannot read attention_layers"),
    ("sampler", {"cfg": math.inf}, "bigger than max"),  # ComfyUI's own check: the sampler takes no validator
])
def test_a_typo_or_an_infinite_number_is_refused_at_queue_time(models, node, inputs, message):
    """Nothing runs: ComfyUI's validation refuses the prompt before the minutes-long inversion."""
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent",
                                      **{node: inputs})
    valid, _, _, node_errors = validate(prompt.api)
    assert not valid
    text = _errors(node_errors, refs[node].node_id)
    assert message in text, text
    assert len(text) < 4000  # an absurd string is quoted as a short excerpt, not echoed back


@pytest.mark.parametrize("node, inputs, message", [
    ("bank", {"feature_injection": NAN}, "feature_injection is nan"),
    ("sampler", {"injection_strength": NAN}, "injection_strength is nan"),
    ("sampler", {"outside_mask_strength": NAN}, "outside_mask_strength is nan"),
    ("sampler", {"negative_alpha": NAN}, "negative_alpha is nan"),
])
def test_a_nan_is_refused_before_the_inversion_runs(models, node, inputs, message):
    """NaN passes ComfyUI's min/max checks (JSON prompts can carry it); the node whose lazy input leads to the
    inversion refuses it before asking for that input, so PnP DDIM Inversion never runs."""
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent",
                                      **{node: inputs})
    result = run_prompt(prompt.api)
    assert not result.success
    error = result.error()
    assert error["node_id"] == refs[node].node_id and message in error["exception_message"], error
    assert refs["inversion"].node_id not in executed_nodes(result)


def test_the_same_checks_refuse_values_that_arrive_through_a_link(pnp):
    with pytest.raises(ValueError, match="injection_strength is nan; it must be a finite number"):
        pnp.sample(injection_strength=NAN)
    with pytest.raises(ValueError, match="cfg is nan"):
        pnp.sample(cfg=NAN)
    with pytest.raises(ValueError, match="attention_layers"):
        pnp.record(attention_layers="4-11:0-9999")
    with pytest.raises(ValueError, match="cfg is nan"):
        run_node("PnP_GenerateGuidance", model=pnp.model, positive=pnp.positive, negative=pnp.empty, steps=2,
                 latent={"samples": torch.zeros(1, 4, 8, 8)}, cfg=NAN)


@pytest.mark.parametrize("layer, steps, message", [("4-5", "auto", "does not name exactly one layer"),
                                                   ("auto", "0-99999999", "up to 4 digits"),
                                                   ("auto", "every 0", "at least 1")])
def test_pca_layer_and_steps_are_checked_at_queue_time(models, layer, steps, message):
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent")
    pca = prompt.add("PnP_FeaturePCA", features=refs["bank"][0], layer=layer, steps=steps)
    prompt.add("PreviewImage", images=pca[0])
    _, _, good_outputs, node_errors = validate(prompt.api)  # the graph's other output is valid on its own
    assert pca.node_id in node_errors and message in _errors(node_errors, pca.node_id), node_errors
    assert all(prompt.api[o]["class_type"] != "PreviewImage" for o in good_outputs)


@pytest.mark.parametrize("name, message", [("x" * 250, "too long"), ("../up", "'..'"), ("/etc/x", "absolute")])
def test_save_names_are_refused_at_queue_time_without_a_raw_os_error(pnp, models, name, message):
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS)
    del prompt.api[refs["output"].node_id], prompt.api[refs["sampler"].node_id]
    save = prompt.add("PnP_SaveFeatures", features=refs["bank"][0], filename_prefix=name)
    valid, _, _, node_errors = validate(prompt.api)
    text = _errors(node_errors, save.node_id)
    assert not valid and message in text and "OSError" not in text, text
    with pytest.raises(ValueError, match=message):
        run_node("PnP_SaveFeatures", features=pnp.bank, filename_prefix=name)


def test_bank_files_that_are_not_banks_leak_nothing_through_the_executor(host, models, tmp_path):
    import folder_paths

    folder = folder_paths.get_folder_paths("pnp_banks")[0]
    secret = tmp_path / "passwd"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 8)
    link = os.path.join(folder, "linked_text.safetensors")
    if not os.path.lexists(link):
        os.symlink(secret, link)
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent")
    loaded = prompt.add("PnP_LoadFeatures", model=refs["ckpt"][0], bank_name="linked_text.safetensors")
    prompt.api[refs["sampler"].node_id]["inputs"]["features"] = loaded[0].link
    result = run_prompt(prompt.api)
    assert not result.success
    message = result.error()["exception_message"]
    assert "linked_text.safetensors" in message and "not announce a header" in message
    for leak in ("root", str(tmp_path), folder, str(int.from_bytes(b"root:x:0", "little"))):
        assert leak not in message, (leak, message)


@pytest.mark.parametrize("mode", ["stored", "on the fly"])
def test_nothing_of_a_run_stays_alive(host, models, mode):
    """Through ComfyUI's executor with no output cache: after each translation no bank, trajectory, injector,
    recorder or PnP patch object made by it is alive (what the pack creates for a run goes with it)."""
    import gc

    kinds = {"FeatureBank", "Trajectory", "Injector", "Recorder", "StoredSource", "LiveSource", "InjectingStep",
             "_SitePatch", "Evaluation"}

    def pack_objects() -> dict[int, str]:
        gc.collect()
        return {id(o): type(o).__name__ for o in gc.get_objects()
                if type(o).__name__ in kinds and type(o).__module__.startswith(host.pack_module_name)}

    prompt, _ = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent",
                                   bank={"mode": mode})
    executor = new_executor(keep_outputs=False)
    before = pack_objects()  # other tests' fixtures hold banks of their own
    for _ in range(2):
        assert run_prompt(prompt.api, executor).success
        made_by_the_runs = {i: kind for i, kind in pack_objects().items() if i not in before}
        assert made_by_the_runs == {}, sorted(made_by_the_runs.values())


def test_feature_bank_stops_within_one_unet_call_of_cancel_and_reports_each_timestep(host, models):
    """At 256 px (latent 32x32) the automatic batch holds one timestep: Cancel is seen after one UNet call."""
    import comfy.model_management
    import comfy.utils

    large = Translation.make(models, latent=torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(5)),
                             steps=STEPS)
    hook = comfy.utils.PROGRESS_BAR_HOOK
    seen = []

    def cancel_at_first_progress(value, total, preview, prompt_id=None, node_id=None):
        seen.append(value)
        comfy.model_management.interrupt_current_processing(True)
        hook(value, total, preview)

    comfy.utils.set_progress_bar_global_hook(cancel_at_first_progress)
    try:
        with UNetRows() as counter, pytest.raises(comfy.model_management.InterruptProcessingException):
            run_node("PnP_FeatureBank", model=large.model, inversion=large.inversion, conditioning=large.empty)
    finally:
        comfy.utils.set_progress_bar_global_hook(hook)
        comfy.model_management.interrupt_current_processing(False)
    assert counter.rows == [1] and seen == [1]  # Cancel is honoured before the next call
    assert all(not m._forward_hooks for m in large.model.model.diffusion_model.modules())


def test_feature_bank_stops_inside_a_batched_unet_call_at_cancel(host, models):
    """At 64 px one source-pass call carries every recorded timestep (up to 16); Cancel during its encoder stops
    it before the decoder (the recording clone checks after every input block and before every output block)."""
    import comfy.model_management

    small = Translation.make(models, steps=STEPS)
    unet = small.model.model.diffusion_model
    decoder_blocks_run = []

    def cancel_in_the_encoder(module, args, output):
        comfy.model_management.interrupt_current_processing(True)

    hooks = [unet.input_blocks[1][0].register_forward_hook(cancel_in_the_encoder),
             unet.output_blocks[0][0].register_forward_hook(lambda *_: decoder_blocks_run.append(0))]
    try:
        with UNetRows() as counter, pytest.raises(comfy.model_management.InterruptProcessingException):
            run_node("PnP_FeatureBank", model=small.model, inversion=small.inversion, conditioning=small.empty)
    finally:
        for hook in hooks:
            hook.remove()
        comfy.model_management.interrupt_current_processing(False)
    assert len(counter.rows) == 1 and counter.rows[0] > 1 and decoder_blocks_run == []
