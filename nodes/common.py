"""What the nodes share: the bank-recording inputs, and the checks of what a user typed.

Three moments. At queue time ComfyUI checks every number, combo and link
itself; a node's ``validate_inputs`` takes only the text inputs ComfyUI cannot
read (layer strings, value lists, file names), because ComfyUI skips its own
checks for the inputs a validator takes and reports a validator's failure on
each of them. Before expensive upstream work a node with a lazy input
(``check_lazy_status``) checks what it can without it: numbers (NaN passes
ComfyUI's min/max), the model and the layers it has. When the node runs every
check runs again (a value may also arrive through a link).
"""
from __future__ import annotations

from typing import Callable

from comfy_api.v0_0_2 import io

from ..pnp_hooks.bank import STORAGE_DTYPES
from ..pnp_hooks.errors import PnPInputError, require_finite
from ..pnp_hooks.indices import excerpt
from ..pnp_hooks.families import unet
from ..pnp_hooks.layers import LayerSites, check_spec, resolve_sites, specs_of_inputs
from ..pnp_hooks.patcher import ModelFacts


def layer_inputs() -> list:
    return [
        io.String.Input("resblock_layers", default="auto", tooltip=(
            "Decoder blocks whose ResBlock features are injected (output_blocks[b][0], residual branch). "
            "'auto' = the paper's choice: block 4 for SD1.x/2.x; block 1 for SDXL (the node's help, ?, explains "
            "the layers).")),
        io.String.Input("attention_layers", default="auto", tooltip=(
            "Decoder blocks whose self-attention q and k are injected, as 'block' or 'block:transformer' "
            "(ranges allowed, e.g. '4-11'). 'auto' = the paper's choice: blocks 4-11 for SD1.x/2.x; for SDXL "
            "blocks 1-5, first transformer of each stack ('1-5:0'; the node's help, ?, explains the layers).")),
        io.Float.Input("feature_injection", default=0.8, min=0.0, max=1.0, step=0.01, tooltip=(
            "Largest ResBlock injection threshold (tau_f, fraction of steps) a PnP Sampler will use with this "
            "bank: only those leading steps are recorded. Paper: 0.8.")),
        io.Float.Input("attention_injection", default=0.5, min=0.0, max=1.0, step=0.01, tooltip=(
            "Largest self-attention injection threshold (tau_A, fraction of steps) a PnP Sampler will use "
            "with this bank: only those leading steps are recorded. Paper: 0.5.")),
        io.Combo.Input("bank_dtype", options=list(STORAGE_DTYPES), default="fp16", tooltip=(
            "Precision of the stored features. fp16 halves the memory; fp32 reproduces the official "
            "code bit for bit.")),
    ]


def resolve_layers(facts: ModelFacts, resblock_layers: str, attention_layers: str) -> LayerSites:
    family = facts.family
    specs = specs_of_inputs({"resblock_layers": resblock_layers, "attention_layers": attention_layers},
                            family.KINDS, family.DEFAULTS[facts.identity.family])
    return resolve_sites(specs, facts.layout, family.KINDS)


# The layer inputs are the UNet family's kinds of site: their grammar, read at queue time (no model yet).
LAYER_TEXT_CHECKS: dict[str, Callable[[str], None]] = {
    kind.input: (lambda text, kind=kind: check_spec(text, kind)) for kind in unet.KINDS}


def check_inputs(inputs: list, values: dict, text_checks: dict[str, Callable] | None = None) -> None:
    """Every Float input of ``inputs`` (a node's declared inputs) finite and within its declared range, every
    Combo input one of its options (ComfyUI 0.3.64 checks no V3 combo at queue time), each text input its check
    accepts. ``values``: the inputs by name (linked ones may be missing or None). The declared inputs come from
    the node module, not its schema: ComfyUI calls check_lazy_status on a locked copy of the class, whose schema
    cannot be built."""
    for item in inputs:
        value = values.get(item.id)
        if value is None:
            continue
        if isinstance(item, io.Float.Input):
            require_finite(item.id, value, item.min, item.max)
        elif isinstance(item, io.Combo.Input) and value not in item.options:
            raise PnPInputError(f"{item.id} must be one of {', '.join(map(str, item.options))}; got "
                                f"{excerpt(value)}.")
        elif text_checks and item.id in text_checks:
            text_checks[item.id](value)


def queue_time_answer(check: Callable[..., object], *args) -> bool | str:
    """``check(*args)`` answered as ComfyUI wants a validate_inputs to answer: True, or the PnPInputError's
    message."""
    try:
        check(*args)
    except PnPInputError as exc:
        return str(exc)
    return True


def queue_time_check(text_checks: dict[str, Callable[[str], None]], **texts: str | None) -> bool | str:
    """The text inputs a validate_inputs takes, each read by its check: True, or the message as ComfyUI wants
    it. A linked (None) text is checked when the node runs."""
    def check_all() -> None:
        for name, text in texts.items():
            if text is not None:
                text_checks[name](text)

    return queue_time_answer(check_all)
