"""What a newcomer and a script meet at queue time (issue 20): ComfyUI's own checks stay on for every input a
PnP node does not read itself, a mistake is reported on its own input, a layer the model lacks is refused before
the inversion runs, and an error's type names no server path.

Through ComfyUI's own validation and executor (``validate_prompt``, ``PromptExecutor``), as the server runs them.
"""
from __future__ import annotations

import json

import pytest

from comfy_host import run_prompt, validate
from find_comfyui import PACK_ROOT, comfyui_version, version_tuple
from harness import executed_nodes, translation_prompt

STEPS = 4


def _errors_by_input(node_errors: dict, node_id: str) -> dict[str, list[str]]:
    """The node's validation errors, keyed by the input ComfyUI rings in the frontend."""
    found: dict[str, list[str]] = {}
    for error in node_errors.get(node_id, {}).get("errors", []):
        found.setdefault(error["extra_info"]["input_name"], []).append(error["type"])
    return found


@pytest.mark.parametrize("node, name, value, comfy_check", [
    ("bank", "mode", "bogus", "value_not_in_list"),
    ("bank", "batch_size", -3, "value_smaller_than_min"),
    ("bank", "bank_dtype", "fp64", "value_not_in_list"),
    ("sampler", "threshold_convention", "mine", "value_not_in_list"),
    ("sampler", "final_step", "last", "value_not_in_list"),
    ("sampler", "cfg", 500.0, "value_bigger_than_max"),
    ("inversion", "inversion_steps", -1, "value_smaller_than_min"),
])
def test_comfyui_checks_every_combo_and_number_itself_and_rings_only_that_input(host, models, node, name, value,
                                                                                  comfy_check):
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent",
                                      **{node: {name: value}})
    valid, _, _, node_errors = validate(prompt.api)
    if comfy_check == "value_not_in_list" and version_tuple(comfyui_version(host.comfy_path)) < (0, 4):
        # ComfyUI 0.3.64 checks only list-typed (V1) combos at queue time; the pack's own check refuses the
        # value before the inversion runs.
        assert valid, node_errors
        result = run_prompt(prompt.api)
        error = result.error()
        assert error["node_id"] == refs[node].node_id and f"{name} must be one of" in error["exception_message"]
        assert refs["inversion"].node_id not in executed_nodes(result)
        return
    assert not valid
    assert _errors_by_input(node_errors, refs[node].node_id) == {name: [comfy_check]}, node_errors


@pytest.mark.parametrize("name, value", [("attention_layers", "4-11:x"), ("resblock_layers", "four")])
def test_a_layer_typo_is_reported_on_the_layer_inputs_only(models, name, value):
    """ComfyUI reports a validator's failure on every input the validator takes: PnP Feature Bank's takes only
    its two layer strings, so the model, inversion, conditioning and number inputs are never ringed (before:
    11 errors for one typo). Each error names the input that is wrong."""
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent",
                                      bank={name: value})
    valid, _, _, node_errors = validate(prompt.api)
    assert not valid
    assert set(_errors_by_input(node_errors, refs["bank"].node_id)) <= {"resblock_layers", "attention_layers"}
    for error in node_errors[refs["bank"].node_id]["errors"]:
        assert error["type"] == "custom_validation_failed" and name in error["details"], error
    assert list(node_errors) == [refs["bank"].node_id]  # no other node is blamed


def test_a_valid_prompt_passes_with_the_lazy_inputs(models):
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent")
    valid, error, _, node_errors = validate(prompt.api)
    assert valid, (error, node_errors)


@pytest.mark.parametrize("layers", [{"attention_layers": "99"}, {"resblock_layers": "12"}])
def test_a_layer_the_model_lacks_is_refused_before_the_inversion_runs(models, layers):
    """The layer strings read at queue time, but whether the model has the layer needs the model: PnP Feature
    Bank's inversion input is lazy, so the check runs before PnP DDIM Inversion is asked for."""
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent",
                                      bank=layers)
    assert validate(prompt.api)[0]
    result = run_prompt(prompt.api)
    assert not result.success
    error = result.error()
    assert error["node_id"] == refs["bank"].node_id and error["node_type"] == "PnP_FeatureBank"
    assert next(iter(layers)) in error["exception_message"], error["exception_message"]
    ran = executed_nodes(result)
    assert refs["inversion"].node_id not in ran and refs["bank"].node_id in ran, ran


def test_the_inversion_runs_once_after_the_checks_when_they_pass(models):
    """PnP Sampler and PnP Feature Bank start first (their checks), ask for their lazy input, and run again
    once it is there: the inversion runs once, between the checks and the recording."""
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent")
    result = run_prompt(prompt.api)
    assert result.success
    ran = executed_nodes(result)
    inversion, bank, sampler = (refs[name].node_id for name in ("inversion", "bank", "sampler"))
    assert ran.count(inversion) == 1 and ran.count(bank) == 2 and ran.count(sampler) == 2, ran
    assert ran.index(sampler) < ran.index(bank) < ran.index(inversion) < ran.index(bank, ran.index(inversion))


def test_an_error_names_its_type_without_a_server_path(models):
    """ComfyUI prints an exception's module before its name, and imports the pack under its folder's path: the
    pack's error types carry a stable module name instead."""
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent",
                                      bank={"attention_layers": "99"})
    error = run_prompt(prompt.api).error()
    assert error["exception_type"] == "comfyui_pnp.PnPInputError"
    sent = json.dumps({key: error[key] for key in ("exception_type", "exception_message", "node_type")})
    assert str(PACK_ROOT) not in sent and PACK_ROOT.name + "." not in sent and "/" not in error["exception_type"]
