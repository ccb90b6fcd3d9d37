"""PnP DDIM Inversion node."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..pnp_hooks import flow_solvers, sampling
from . import flux
from .types import CATEGORY, PnPInversion, pnp_schema


class PnPDDIMInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_DDIMInversion",
            display_name="PnP DDIM Inversion",
            category=CATEGORY,
            description=(
                "Inverts the guidance image's latent with the official deterministic DDIM inversion "
                "(eta 0, guidance 1) and keeps the latent at every sampling timestep. A batch (video frames, "
                "photos of one size) is inverted frame by frame, each exactly as a single image."),
            inputs=[
                io.Model.Input("model", tooltip="The SD 1.x/2.x or SDXL model used by every PnP node of this graph."),
                io.Latent.Input("latent", tooltip=(
                    "The guidance image encoded with VAE Encode; a batch of images gives one trajectory per image.")),
                io.Conditioning.Input("conditioning", tooltip=(
                    "Inversion prompt. The paper inverts with the empty prompt \"\".")),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip=(
                    "Sampling steps the result is meant for (PnP Sampler uses the same). Paper: 50.")),
                io.Int.Input("inversion_steps", default=0, min=0, max=1000, tooltip=(
                    "DDIM inversion steps; 0 = same as steps. More steps reconstruct better (the officials use "
                    "999); the count's timesteps must contain the sampling timesteps.")),
                io.Combo.Input("solver", options=list(flow_solvers.SOLVERS), default=flow_solvers.RF_SOLVER,
                               optional=True, tooltip=flux.SOLVER_TOOLTIP),
            ],
            outputs=[
                PnPInversion.Output("inversion", display_name="inversion",
                                    tooltip="The inverted latent at every sampling timestep."),
                io.Latent.Output("noise", display_name="noise", tooltip=(
                    "The inverted latent at the first sampling timestep (x_T; one per image of a batch), for other "
                    "samplers: KSampler (Advanced) with add_noise disabled, ddim/ddim_uniform and the same steps.")),
            ],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, steps, inversion_steps,
                solver=flow_solvers.RF_SOLVER) -> io.NodeOutput:
        if flux.is_flux(model):
            return io.NodeOutput(*flux.invert(model, latent, conditioning, steps, inversion_steps, solver))
        trajectory = sampling.invert(model, latent["samples"], conditioning, steps, inversion_steps)
        return io.NodeOutput(trajectory, {"samples": trajectory.x_T()})
