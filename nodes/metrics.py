"""Score nodes (structure distance, text score) and the threshold sweep: measure what PnP trades."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..pnp_hooks import metrics, scoring, sweep
from ..pnp_hooks.schedule import THRESHOLD_CONVENTIONS
from ..pnp_hooks.sampling import FINAL_STEPS
from . import flux
from .common import check_inputs, queue_time_check
from .types import CATEGORY, IMAGE_CATEGORY, PnPFeatures, pnp_schema

CROPS = {"center": True, "none": False}


def _crop_input() -> io.Combo.Input:
    return io.Combo.Input("crop", options=list(CROPS), default="center", tooltip=(
        "How the images are fitted to the vision model's square input, as CLIP Vision Encode: center = resize the "
        "short side and crop the middle; none = stretch the whole image."))


class PnPStructureScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_StructureScore",
            display_name="PnP Structure Score",
            category=IMAGE_CATEGORY,
            description=(
                "The paper's structure score (Splice's self-similarity distance): the cosine self-similarity of "
                "the vision model's last-layer keys over all tokens, of the guidance image and of each image; the "
                "distance is their mean squared difference. 0 = the same structure; lower keeps more of it."),
            inputs=[
                io.ClipVision.Input("vision_model", tooltip=(
                    "A DINOv2 model from Load CLIP Vision (closest to the paper's DINO ViT-B/8); CLIP ViT vision "
                    "models work too.")),
                io.Image.Input("guidance", tooltip="The guidance image (one, or one per image, compared in order)."),
                io.Image.Input("images", tooltip="The images to score, e.g. PnP results; a batch scores per image."),
                _crop_input(),
            ],
            outputs=[
                io.Float.Output("distance", display_name="distance", is_output_list=True,
                                tooltip="Structure distance of each image (a list, one per image)."),
                io.Image.Output("maps", display_name="maps", tooltip=(
                    "Per image: the guidance image's and the image's self-similarity matrices (patch tokens in "
                    "reading order, cosine -1 dark to 1 light) and their difference.")),
                io.String.Output("summary", display_name="summary", tooltip="The distances as text."),
            ],
        )

    @classmethod
    def execute(cls, vision_model, guidance, images, crop) -> io.NodeOutput:
        scoring.check_images(guidance, "guidance image")
        scoring.check_images(images, "image batch to score")
        metrics.pair_rows(guidance.shape[0], images.shape[0])
        guidance_keys = scoring.last_layer_keys(vision_model, guidance, CROPS[crop])
        keys = scoring.last_layer_keys(vision_model, images, CROPS[crop])
        distances = scoring.structure_distances(guidance_keys, keys)
        summary = "\n".join(f"image {i}: structure distance {d:.6f}" for i, d in enumerate(distances, 1))
        return io.NodeOutput(distances, scoring.structure_maps(guidance_keys, keys, distances), summary)


class PnPTextScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_TextScore",
            display_name="PnP Text Score",
            category=IMAGE_CATEGORY,
            description=(
                "The paper's text fidelity: cosine similarity of each image's CLIP image embedding and the "
                "prompt's CLIP text embedding, in the same joint space. Higher follows the prompt more."),
            inputs=[
                io.ClipVision.Input("vision_model", tooltip=(
                    "The CLIP vision model of the prompt's text encoder: clip_vision_g for SDXL's CLIP (or clip_g), "
                    "clip_vision_h for SD 2.x's.")),
                io.Conditioning.Input("prompt", tooltip=(
                    "The prompt from CLIP Text Encode (its pooled embedding is used). SD 1.x checkpoints' CLIP-L "
                    "gives an unprojected one: encode the prompt with SDXL's CLIP or clip_g instead.")),
                io.Image.Input("images", tooltip="The images to score; a batch scores per image."),
                _crop_input(),
            ],
            outputs=[
                io.Float.Output("score", display_name="score", is_output_list=True,
                                tooltip="Text score of each image (a list, one per image)."),
                io.String.Output("summary", display_name="summary", tooltip="The scores as text."),
            ],
        )

    @classmethod
    def execute(cls, vision_model, prompt, images, crop) -> io.NodeOutput:
        scoring.check_images(images, "image batch to score")
        scores = scoring.text_scores(vision_model, images, prompt, CROPS[crop])
        return io.NodeOutput(scores, "\n".join(f"image {i}: text score {s:.4f}" for i, s in enumerate(scores, 1)))


VALUE_LISTS = {
    "feature_injection_values": "feature_injection (tau_f)",
    "attention_injection_values": "attention_injection (tau_A)",
    "injection_strength_values": "injection_strength",
}


def _sweep_inputs() -> list:
    """The node's inputs (also what ``check_inputs`` reads: check_lazy_status must not touch the schema)."""
    return [
        io.Model.Input("model", tooltip="The same model the bank was recorded with."),
        io.Conditioning.Input("positive", tooltip="The target prompt, as for PnP Sampler."),
        io.Conditioning.Input("negative", tooltip="The unconditional branch, as for PnP Sampler."),
        PnPFeatures.Input("features", lazy=True, tooltip=(
            "From PnP Feature Bank: its feature_injection / attention_injection must be at least the largest "
            "values swept. Asked for only after the value lists and cfg are checked.")),
        io.Vae.Input("vae", tooltip="Decodes each cell for the grid and the scores."),
        io.Image.Input("guidance", tooltip="The guidance image (what the structure distance compares with)."),
        io.ClipVision.Input("structure_model", tooltip="DINOv2 from Load CLIP Vision, as for PnP Structure Score."),
        io.ClipVision.Input("text_model", tooltip="CLIP vision model of the text prompt's encoder, as for PnP Text "
                                                  "Score."),
        io.String.Input("feature_injection_values", default="0.4, 0.6, 0.8", tooltip=(
            "tau_f values, separated by commas: one grid column each.")),
        io.String.Input("attention_injection_values", default="0.2, 0.5", tooltip=(
            "tau_A values, separated by commas: one grid row each.")),
        io.String.Input("injection_strength_values", default="1.0", tooltip=(
            "injection_strength values, separated by commas (1.0 = the paper): more rows.")),
        io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=(
            "Classifier-free guidance scale, as for PnP Sampler.")),
        io.Combo.Input("threshold_convention", options=list(THRESHOLD_CONVENTIONS), default="pnp-diffusers",
                       tooltip="As for PnP Sampler."),
        io.Combo.Input("final_step", options=list(FINAL_STEPS), default="official", tooltip="As for PnP Sampler."),
        _crop_input(),
        io.Conditioning.Input("text_prompt", optional=True, tooltip=(
            "The prompt for the text score if it must come from another text encoder than the model's (SD 1.x: "
            "CLIP Text Encode with SDXL's CLIP or clip_g). Default: positive.")),
    ]


def _value_checks() -> dict:
    return {name: (lambda text, label=label: metrics.parse_values(text, label)) for name, label in
            VALUE_LISTS.items()}


class PnPThresholdSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_ThresholdSweep",
            display_name="PnP Threshold Sweep",
            category=CATEGORY,
            description=(
                "Runs PnP Sampler over a grid of feature_injection x attention_injection (x injection_strength) "
                "from one bank (N cells = N samplings), scores each result's structure distance to the guidance "
                "image and its text score, and marks the cells on the trade-off front (the paper's ablation plot)."),
            inputs=_sweep_inputs(),
            outputs=[
                io.Image.Output("grid", display_name="grid", tooltip=(
                    "The results in a labelled grid (columns: feature_injection; rows: attention_injection, then "
                    "strength); * = on the trade-off front.")),
                io.Image.Output("plot", display_name="plot", tooltip=(
                    "Structure distance against text score per cell (numbers as in the grid), front in red.")),
                io.String.Output("table", display_name="table", tooltip="Per cell: thresholds and both scores."),
                io.Image.Output("images", display_name="images", tooltip="The results as an image batch."),
                io.Latent.Output("latents", display_name="latents", tooltip="The results' latents as a batch."),
            ],
        )

    @classmethod
    def validate_inputs(cls, feature_injection_values=None, attention_injection_values=None,
                        injection_strength_values=None):
        return queue_time_check(_value_checks(), feature_injection_values=feature_injection_values,
                                attention_injection_values=attention_injection_values,
                                injection_strength_values=injection_strength_values)

    @classmethod
    def check_lazy_status(cls, features=None, **inputs) -> list[str]:
        """Before the bank is made: the value lists and cfg (NaN passes ComfyUI's own min/max checks)."""
        if features is not None:
            return []
        check_inputs(_sweep_inputs(), inputs, _value_checks())
        return ["features"]

    @classmethod
    def execute(cls, model, positive, negative, features, vae, guidance, structure_model, text_model,
                feature_injection_values, attention_injection_values, injection_strength_values, cfg,
                threshold_convention, final_step, crop, text_prompt=None) -> io.NodeOutput:
        check_inputs(_sweep_inputs(), locals(), _value_checks())  # locals(): the inputs, by name
        lists = (feature_injection_values, attention_injection_values, injection_strength_values)
        cells = metrics.sweep_cells(*(metrics.parse_values(text, label) for text, label in
                                      zip(lists, VALUE_LISTS.values())))
        flux.refuse_flux_bank(features, "PnP Threshold Sweep")
        shared = sweep.CellSampling(positive, negative, cfg, threshold_convention, final_step)
        scorer = sweep.CellScoring(vae, guidance, structure_model, text_model,
                                   positive if text_prompt is None else text_prompt, CROPS[crop])
        result = sweep.run_sweep(model, features, cells, shared, scorer)
        return io.NodeOutput(result.grid, result.plot, result.table, result.images, {"samples": result.latents})
