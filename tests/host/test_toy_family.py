"""The seam between the pack and a model family: a toy family, written only here, runs through the nodes.

The toy model is a ComfyUI ``BaseModel`` (SD 1.x latents, discrete eps schedule) around an 8-channel
network with one self-attention, which calls ComfyUI's ``attn1_patch`` points and DIFFUSION_MODEL wrappers as
ComfyUI's own models do. Its family module (``ToyFamily``) is registered beside the real ones; PnP DDIM
Inversion, PnP Feature Bank and PnP Sampler run on it without any change to the pack.
"""
from __future__ import annotations

import pytest
import torch

from harness import run_node

WIDTH = 8
STEPS = 6


class ToyNet(torch.nn.Module):
    """conv in, one self-attention (its attn1_patch site: decoder block 0, transformer 0), conv out."""

    def __init__(self, width=WIDTH, device=None, operations=None, **kwargs):
        super().__init__()
        self.dtype = torch.float32
        self.conv_in = torch.nn.Conv2d(4, width, 3, padding=1, device=device)
        self.time = torch.nn.Linear(1, width, device=device)
        self.to_q = torch.nn.Linear(width, width, bias=False, device=device)
        self.to_k = torch.nn.Linear(width, width, bias=False, device=device)
        self.to_v = torch.nn.Linear(width, width, bias=False, device=device)
        self.heads = 1
        self.conv_out = torch.nn.Conv2d(width, 4, 3, padding=1, device=device)

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        import comfy.patcher_extension as ext

        wrappers = ext.get_all_wrappers(ext.WrappersMP.DIFFUSION_MODEL, transformer_options)
        return ext.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timesteps, context, y, control, transformer_options, **kwargs)

    def _forward(self, x, timesteps, context, y, control, transformer_options, **kwargs):
        h = self.conv_in(x) + self.time(timesteps.float().reshape(-1, 1) / 1000.0)[:, :, None, None]
        b, c, height, width = h.shape
        n = h.flatten(2).transpose(1, 2)
        n = n + context.mean(dim=(1, 2), keepdim=True)
        options = {**transformer_options, "block": ("output", 0), "block_index": 0,
                   "activations_shape": [b, c, height, width]}
        qk_input, context_input, value_input = n, n, n
        for patch in transformer_options.get("patches", {}).get("attn1_patch", []):
            qk_input, context_input, value_input = patch(qk_input, context_input, value_input, options)
        q, k, v = self.to_q(qk_input), self.to_k(context_input), self.to_v(value_input)
        attention = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1) @ v
        return self.conv_out((n + attention).transpose(1, 2).reshape(b, c, height, width))


class ToyFamily:
    """The toy's family: what every family module provides (see pnp_hooks/families/__init__.py), with a kind of
    site of its own ("attn_qk": the q/k input of its self-attention, typed in attention_layers)."""

    NAME = "toy"
    VARIANTS = {"ToyConfig": "Toy"}
    DEFAULTS = {"ToyConfig": {"attn_qk": "0"}}
    FINGERPRINT_KEYS = ("diffusion_model.to_q.weight", "diffusion_model.conv_out.weight")

    def __init__(self, families, layouts, schedules):
        self.KINDS = (families.SiteKind(
            name="attn_qk", input="attention_layers", file_key="attn_qk", label="attention", plural="self-attention",
            short="attention", indexed=True, example='"0"', threshold=families.ATTENTION_THRESHOLD,
            patch=families.ATTN1_QK_INPUT, spatial_dims=1, file_rank=4),)
        self.UNetLayout = layouts
        self.DiscreteVPSchedule = schedules

    def layout_of(self, net):
        return self.UNetLayout((False,), (1,), (0,), (net.to_q.in_features,), (0,))

    def check(self, model):
        schedule = self.DiscreteVPSchedule.of(model.get_model_object("model_sampling"))
        return "eps", self.layout_of(model.model.diffusion_model), schedule

    def site_at(self, kind, extra_options):
        return (0, 0) if extra_options.get("block") == ("output", 0) else None


@pytest.fixture
def toy(host, monkeypatch):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    families = host.pack_module("pnp_hooks.families")
    family = ToyFamily(families, host.pack_module("pnp_hooks.families.unet").UNetLayout,
                       host.pack_module("pnp_hooks.families.vp_schedule").DiscreteVPSchedule)
    monkeypatch.setattr(families, "FAMILIES", families.FAMILIES + (family,))
    config = type("ToyConfig", (comfy.supported_models.SD15,), {})({"width": WIDTH})
    torch.manual_seed(0)
    base = comfy.model_base.BaseModel(config, device=torch.device("cpu"), unet_model=ToyNet)
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def test_a_family_written_outside_the_pack_runs_through_feature_bank_and_sampler(toy):
    prompt = [[torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(1)), {}]]
    target = [[torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(2)), {}]]
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    inversion = run_node("PnP_DDIMInversion", model=toy, latent=latent, conditioning=prompt, steps=STEPS)[0]
    bank = run_node("PnP_FeatureBank", model=toy, inversion=inversion, conditioning=prompt, bank_dtype="fp32",
                    attention_injection=1.0)[0]
    assert bank.sites["resblock"] == () and bank.sites["attn_qk"] == ((0, 0),)
    assert tuple(bank.stored["attn_qk"][(0, 0)].shape) == (STEPS, 1, 64, WIDTH)

    def sample(**inputs):
        return run_node("PnP_Sampler", model=toy, positive=target, negative=prompt, features=bank,
                        **inputs)[0]["samples"]

    plain = sample(feature_injection=0.0, attention_injection=0.0)
    injected = sample(attention_injection=1.0)
    assert torch.isfinite(injected).all() and float((injected - plain).abs().max()) > 1e-4
    live = run_node("PnP_FeatureBank", model=toy, inversion=inversion, conditioning=prompt, mode="on the fly")[0]
    on_the_fly = run_node("PnP_Sampler", model=toy, positive=target, negative=prompt, features=live,
                          attention_injection=1.0)[0]["samples"]
    assert torch.allclose(on_the_fly, injected, rtol=1e-4, atol=1e-4)
