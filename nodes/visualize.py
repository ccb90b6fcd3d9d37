"""PnP Feature PCA node: see what PnP injects, to choose layers and thresholds."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..pnp_hooks import probe, visualize
from ..pnp_hooks.errors import PnPInputError
from ..pnp_hooks.indices import excerpt
from ..pnp_hooks.families import unet
from ..pnp_hooks.layers import parse_site
from . import flux
from .common import queue_time_answer
from .types import IMAGE_CATEGORY, PnPFeatures, pnp_schema


class PnPFeaturePCA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_FeaturePCA",
            display_name="PnP Feature PCA",
            category=IMAGE_CATEGORY,
            description=(
                "The paper's feature visualization (Figs. 2-3; the original's run_features_pca.py and "
                "run_self_attn_pca.py): the first three principal components of one layer's tensors as RGB, one "
                "picture per chosen sampling step, upscaled from the layer's resolution to the image size. "
                "Layers whose pictures show the guidance image's parts (not its textures) are good injection "
                "layers; watch how long the structure lasts over the steps to pick thresholds."),
            inputs=[
                PnPFeatures.Input("features", tooltip="From PnP Feature Bank or PnP Generate Guidance."),
                io.Combo.Input("view", options=list(probe.VIEW_KINDS), default="resblock", tooltip=(
                    "resblock: ResBlock features (output_blocks[b][0] residual branch). self-attention map: "
                    "softmax(q k^T) rows of every head (what attention injection transfers). query / key: q or k "
                    "of attn1. attention input: the attn1 input the bank stores. self-attention map, query and key "
                    "need the MODEL input.")),
                io.String.Input("layer", default="auto", tooltip=(
                    "Decoder block ('4'), or 'block:transformer' for attention ('1:0'). 'auto' = the bank's first "
                    "layer of that kind (default SD1.x/2.x: ResBlock 4, attention 4:0; SDXL: ResBlock 1, "
                    "attention 1:0). A layer the bank does not hold is recorded live if MODEL is connected.")),
                io.String.Input("steps", default="auto", tooltip=(
                    "Sampling steps to show (0 = the first, noisiest). 'auto' = 5 evenly spaced over the steps the "
                    "bank recorded for this kind; 'all'; 'every 10'; or a list such as '0,10,20' or '0-4'.")),
                io.Combo.Input("fit", options=list(visualize.FIT_MODES), default="across steps", tooltip=(
                    "across steps: one PCA basis and one colour scale for all shown steps, so colours are "
                    "comparable along the row. per step: a basis per step, as the original scripts (colours "
                    "may change meaning between steps).")),
                io.Int.Input("frame_width", default=0, min=0, max=8192, step=8, tooltip=(
                    "Width in px of each picture (height keeps the image's aspect). 0 = the guidance image's size.")),
                io.Combo.Input("upscale", options=list(visualize.UPSCALE_MODES), default="nearest", tooltip=(
                    "How the layer's low-resolution grid is enlarged: nearest shows the true cells (as the "
                    "original), bilinear smooths them.")),
                io.Int.Input("columns", default=0, min=0, max=64, tooltip=(
                    "Pictures per row of the grid; 0 = all in one row.")),
                io.Model.Input("model", optional=True, tooltip=(
                    "The model the bank was recorded with. Needed for the q/k views (its attn1 to_q/to_k) and to "
                    "record a layer or step the bank does not hold.")),
            ],
            outputs=[
                io.Image.Output("grid", display_name="grid",
                                tooltip="The chosen steps' pictures side by side (left = earliest step)."),
                io.Image.Output("frames", display_name="frames",
                                tooltip="One picture per chosen step, as an image batch."),
                io.String.Output("caption", display_name="caption",
                                 tooltip="What is shown: layer, resolution, steps and their timesteps."),
            ],
        )

    @classmethod
    def validate_inputs(cls, view, layer, steps):
        return queue_time_answer(check_view_text, view, layer, steps)

    @classmethod
    def execute(cls, features, view, layer, steps, fit, frame_width, upscale, columns, model=None) -> io.NodeOutput:
        flux.refuse_flux_bank(features, "PnP Feature PCA")
        request = probe.PCARequest(view, layer, steps, fit, frame_width, upscale, columns)
        result = probe.feature_pca(features, request, model)
        return io.NodeOutput(result.grid, result.frames, result.caption)


def check_view_text(view: str | None, layer: str | None, steps: str | None) -> None:
    """The layer and steps texts read (no bank needed); a linked (None) input is checked when the node runs.
    ``view`` is taken too (how layer reads depends on it), so ComfyUI leaves its combo check to this."""
    if view is not None and view not in probe.VIEW_KINDS:
        raise PnPInputError(f"view must be one of {', '.join(probe.VIEW_KINDS)}; got {excerpt(view)}.")
    if layer is not None and layer.strip().lower() != "auto":
        parse_site(layer, unet.RESBLOCK if view in unet.RESBLOCK.views else unet.ATTENTION)
    if steps is not None:
        visualize.check_steps_spec(steps)
