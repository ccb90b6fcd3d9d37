"""Test-only custom node folder (never shipped with the pack): ComfyUI's T5-XXL at a reduced size.

The test servers that run the FLUX workflows link this folder into their ``custom_nodes/`` beside the pack
(``browser.server_for_workflows``). ComfyUI builds T5-XXL from its fixed config (4.76B parameters, more than
the test machines hold); this gives ``comfy.text_encoders.sd3_clip.T5XXLModel`` the reduced config of
``tests/flux_workflow_models.T5_STAND_IN`` through ComfyUI's own ``t5xxl_model_config`` model option
(``comfy/sd1_clip.py`` reads ``<model_name>_model_config``), so ``DualCLIPLoader`` loads the random stand-in
file the tests put under ``t5xxl_fp16.safetensors``. It registers no node.
"""
import logging

import comfy.text_encoders.sd3_clip

T5_STAND_IN = {"num_layers": 1, "num_heads": 1, "d_ff": 64}  # = tests/flux_workflow_models.T5_STAND_IN

NODE_CLASS_MAPPINGS = {}


def _reduced(init):
    def __init__(self, *args, model_options=None, **kwargs):
        options = dict(model_options or {})
        options["t5xxl_model_config"] = {**T5_STAND_IN, **options.get("t5xxl_model_config", {})}
        init(self, *args, model_options=options, **kwargs)

    return __init__


comfy.text_encoders.sd3_clip.T5XXLModel.__init__ = _reduced(comfy.text_encoders.sd3_clip.T5XXLModel.__init__)
logging.getLogger(__name__).warning("pnp tests: T5-XXL reduced to %s (test server only)", T5_STAND_IN)
