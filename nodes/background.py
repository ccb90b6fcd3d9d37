"""PnP Weaken Background and PnP Restore Brightness: a user's SAM background weakening, around any PnP graph."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..pnp_hooks import background
from .common import check_inputs
from .types import IMAGE_CATEGORY, pnp_schema


def _weaken_inputs() -> list:
    """The node's inputs (also what ``check_inputs`` reads)."""
    return [
        io.Image.Input("image", tooltip="The guidance image, before VAE Encode."),
        io.Mask.Input("mask", tooltip=(
            "The subject (1) to keep as it is; the rest is the background to weaken. Any MASK: a SAM / "
            "segmentation node, Load Image (as Mask), the Mask Editor. The image's size; one mask or one per "
            "image.")),
        io.Float.Input("factor", default=0.5, min=0.0, max=1.0, step=0.05, tooltip=(
            "Brightness of the background: it is multiplied by this (0.5 as the user's notes; 1 = unchanged). "
            "0 deletes the background: the notes found PnP then generates no background at all.")),
        io.Int.Input("feather", default=8, min=0, max=256, tooltip=(
            "Soft edge of the mask in px (a Gaussian blur of sigma feather/2: the edge blends over about "
            "+-feather px); 0 = a hard edge.")),
    ]


class PnPWeakenBackground(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_WeakenBackground",
            display_name="PnP Weaken Background",
            category=IMAGE_CATEGORY,
            description=(
                "A user's improvement of PnP (SAM background weakening): darkens the guidance image outside the "
                "subject mask before VAE Encode, so the inversion and the bank carry less of the background's "
                "clutter and the target prompt shapes it more freely. Brighten the result again with PnP Restore "
                "Brightness."),
            inputs=_weaken_inputs(),
            outputs=[
                io.Image.Output("weakened", display_name="weakened",
                                tooltip="The weakened guidance image, for VAE Encode."),
                io.Mask.Output("brightness", display_name="brightness", tooltip=(
                    "The factor each pixel was multiplied by (1 on the subject, factor on the background), for "
                    "PnP Restore Brightness.")),
            ],
        )

    @classmethod
    def execute(cls, image, mask, factor, feather) -> io.NodeOutput:
        check_inputs(_weaken_inputs(), locals())  # locals(): the inputs, by name
        brightness = background.brightness_map(image, mask, factor, feather)
        return io.NodeOutput(background.weaken(image, brightness), brightness)


class PnPRestoreBrightness(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_RestoreBrightness",
            display_name="PnP Restore Brightness",
            category=IMAGE_CATEGORY,
            description=(
                "After VAE Decode, brightens a translation of a background-weakened guidance image (PnP Weaken "
                "Background): the inverted noise keeps the darker background, so the result is dark there. As "
                "the user's notes: the whole image divided by the background's factor (x2 for 0.5); or only "
                "where it was weakened."),
            inputs=[
                io.Image.Input("image", tooltip="The decoded translation (the guidance image's size)."),
                io.Mask.Input("brightness", tooltip="PnP Weaken Background's brightness output."),
                io.Combo.Input("region", options=list(background.RESTORE_REGIONS), default=background.WHOLE_IMAGE,
                               tooltip=(
                    "whole image: every pixel divided by the background's factor, as the notes (the subject is "
                    "brightened too, clipped at white). weakened area only: each pixel divided by the factor it "
                    "was weakened by (the subject unchanged).")),
            ],
            outputs=[io.Image.Output("restored", display_name="restored",
                                     tooltip="The brightened image, clipped to [0, 1].")],
        )

    @classmethod
    def execute(cls, image, brightness, region) -> io.NodeOutput:
        return io.NodeOutput(background.restore(image, brightness, region))
