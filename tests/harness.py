"""The one harness of the host tests: nodes by keyword, API prompts, one spy on PnP's sites.

- ``run_node(node_id, **inputs)``: any registered node (the pack's V3 nodes
  or ComfyUI's own), called as ComfyUI calls it, under inference mode; inputs
  not given take the node's declared defaults, so a test names only what it
  is about and keeps working when inputs are added or reordered.
- ``Prompt``: an API-format prompt built node by node the same way (defaults
  filled in), for runs through ComfyUI's executor (``host.run_prompt``).
- ``Translation``: one guidance latent, its inversion and bank on a random
  checkpoint, and PnP Sampler runs against it.
- ``InjectionSpy``: what PnP injected, per site and step, in every UNet call.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

EMPTY = ""
TARGET = "a watercolor painting of a fruit bowl"
NEGATIVE = "ugly, blurry, black, low res, unrealistic"


def guidance_pixels(size: int, seed: int = 0) -> torch.Tensor:
    """A structured test image (1, size, size, 3) in [0, 1]: a disc on the left, stripes on the right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.empty((size, size, 3))
    img[:] = [0.2, 0.35, 0.8]
    disc = (yy - 0.5) ** 2 + (xx - 0.27) ** 2 < 0.2 ** 2
    img[disc] = [0.85, 0.25, 0.15]
    stripes = (xx > 0.55) & (np.floor(yy * 8) % 2 == 0)
    img[stripes] = [0.9, 0.85, 0.3]
    img += rng.normal(0, 0.02, img.shape)
    return torch.from_numpy(img.clip(0, 1)).float().unsqueeze(0)


def input_image(name: str, size: int = 64, seed: int = 0) -> str:
    """``guidance_pixels`` saved as ``name`` in ComfyUI's input folder, for Load Image; returns the name."""
    import folder_paths
    from PIL import Image

    pixels = (guidance_pixels(size, seed)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(Path(folder_paths.get_input_directory()) / name)
    return name


def node_class(node_id: str):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[node_id]


def declared_defaults(node_id: str) -> dict:
    """Every input of ``node_id`` that has a default (a combo without one takes its first option)."""
    declared = node_class(node_id).INPUT_TYPES()
    defaults = {}
    for section in ("required", "optional"):
        for name, spec in declared.get(section, {}).items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if "default" in options:
                defaults[name] = options["default"]
            elif isinstance(kind, list) and kind:
                defaults[name] = kind[0]
            elif kind == "COMBO" and options.get("options"):
                defaults[name] = options["options"][0]
    return defaults


def run_node(node_id: str, **inputs) -> tuple:
    """The outputs of one node call (V3: ``execute``; V1: its FUNCTION), defaults filled in."""
    cls = node_class(node_id)
    values = {**declared_defaults(node_id), **inputs}
    with torch.inference_mode():
        if hasattr(cls, "GET_SCHEMA") and hasattr(cls, "execute"):
            return tuple(cls.execute(**values).args)
        return tuple(getattr(cls(), cls.FUNCTION)(**values))


class Prompt:
    """An API-format prompt: ``ref = prompt.add(class_type, **inputs)``; ``ref[i]`` links output ``i``."""

    def __init__(self):
        self.api: dict[str, dict] = {}

    def add(self, class_type: str, **inputs) -> "NodeRef":
        node_id = str(len(self.api) + 1)
        values = {**declared_defaults(class_type), **inputs}
        self.api[node_id] = {"class_type": class_type,
                             "inputs": {k: (v.link if isinstance(v, Link) else v) for k, v in values.items()}}
        return NodeRef(node_id)


@dataclass(frozen=True)
class Link:
    link: list


@dataclass(frozen=True)
class NodeRef:
    node_id: str

    def __getitem__(self, output: int) -> Link:
        return Link([self.node_id, output])


def executed_nodes(result) -> list[str]:
    """The node ids a run through ComfyUI's executor started (its "executing" messages), in order."""
    return [data["node"] for event, data in result.messages if event == "executing" and data.get("node")]


def translation_prompt(ckpt: str, image: str | None = None, target: str = TARGET, steps: int = 8,
                       output: str = "SaveImage", size: int = 64, **inputs) -> tuple[Prompt, dict[str, NodeRef]]:
    """The basic PnP graph as an API prompt: Load Checkpoint, the empty and the target prompt, Load Image (or
    an Empty Latent Image of ``size`` px), VAE Encode, inversion, bank, sampler, then ``output`` (SaveImage
    after a VAE Decode, or SaveLatent). ``inputs``: ``bank={...}``, ``sampler={...}``, ``inversion={...}``."""
    p = Prompt()
    refs = {"ckpt": p.add("CheckpointLoaderSimple", ckpt_name=ckpt)}
    refs["empty"] = p.add("CLIPTextEncode", clip=refs["ckpt"][1], text=EMPTY)
    refs["target"] = p.add("CLIPTextEncode", clip=refs["ckpt"][1], text=target)
    if image is None:
        latent = p.add("EmptyLatentImage", width=size, height=size, batch_size=1)[0]
    else:
        refs["image"] = p.add("LoadImage", image=image)
        latent = p.add("VAEEncode", pixels=refs["image"][0], vae=refs["ckpt"][2])[0]
    refs["inversion"] = p.add("PnP_DDIMInversion", model=refs["ckpt"][0], latent=latent,
                              conditioning=refs["empty"][0], steps=steps, **inputs.get("inversion", {}))
    refs["bank"] = p.add("PnP_FeatureBank", model=refs["ckpt"][0], inversion=refs["inversion"][0],
                         conditioning=refs["empty"][0], **inputs.get("bank", {}))
    refs["sampler"] = p.add("PnP_Sampler", model=refs["ckpt"][0], positive=refs["target"][0],
                            negative=refs["empty"][0], features=refs["bank"][0], **inputs.get("sampler", {}))
    if output == "SaveImage":
        decoded = p.add("VAEDecode", samples=refs["sampler"][0], vae=refs["ckpt"][2])
        refs["output"] = p.add("SaveImage", images=decoded[0], filename_prefix="pnp_test")
    else:
        refs["output"] = p.add("SaveLatent", samples=refs["sampler"][0], filename_prefix="pnp_test")
    return p, refs


def encode(clip, text: str):
    return run_node("CLIPTextEncode", clip=clip, text=text)[0]


@dataclass
class Translation:
    """A guidance latent on one random checkpoint, inverted and recorded; PnP Sampler runs against it."""

    model: object
    clip: object
    vae: object
    latent: dict
    empty: list
    positive: list
    negative: list
    inversion: object = None
    bank: object = None
    steps: int = 8
    banks: dict = field(default_factory=dict)

    @classmethod
    def make(cls, models, layout: str = "sd15_reduced", size: int = 64, steps: int = 8, model=None,
             latent: torch.Tensor | None = None, prompt: str = TARGET, **bank_inputs) -> "Translation":
        """Load ``layout``, encode the drawn guidance image (or take ``latent``), invert it, record a bank
        (fp32, one timestep per call unless ``bank_inputs`` say otherwise)."""
        base, clip, vae = models.load(layout)
        model = model or base
        pixels_latent = {"samples": latent} if latent is not None else \
            run_node("VAEEncode", pixels=guidance_pixels(size), vae=vae)[0]
        t = cls(model, clip, vae, pixels_latent, encode(clip, EMPTY), encode(clip, prompt), encode(clip, NEGATIVE),
                steps=steps)
        t.inversion = t.invert()[0]
        t.bank = t.record(**bank_inputs)
        return t

    def invert(self, **inputs) -> tuple:
        values = dict(model=self.model, latent=self.latent, conditioning=self.empty, steps=self.steps)
        return run_node("PnP_DDIMInversion", **{**values, **inputs})

    def record(self, **inputs):
        """PnP Feature Bank's output for this inversion (fp32, batch 1 unless given), cached per inputs."""
        values = dict(model=self.model, inversion=self.inversion, conditioning=self.empty, bank_dtype="fp32",
                      batch_size=1)
        values.update(inputs)
        key = tuple(sorted((k, id(v) if not isinstance(v, (str, int, float)) else v) for k, v in values.items()))
        if key not in self.banks:
            self.banks[key] = run_node("PnP_FeatureBank", **values)[0]
        return self.banks[key]

    def sample(self, **inputs) -> torch.Tensor:
        """PnP Sampler's latent for this translation (the paper's defaults unless given)."""
        values = dict(model=self.model, positive=self.positive, negative=self.negative, features=self.bank)
        values.update(inputs)
        return run_node("PnP_Sampler", **values)[0]["samples"]


class InjectionSpy:
    """Records what the loaded pack injects: per site, (step, rows, row branches, equal to the source).

    Wraps ``injection.InjectingCall`` (every target UNet call of an injecting
    step) on the pack ComfyUI loaded; ``calls`` lists (step, cond_or_uncond)
    of each such call. "Equal to the source" compares the injected rows with
    the source features of their branch, bit for bit.
    """

    def __init__(self, host, monkeypatch):
        injection = host.pack_module("pnp_hooks.injection")
        self.calls: list[tuple[int, tuple[int, ...]]] = []
        self.attention: dict = defaultdict(list)
        self.resblock: dict = defaultdict(list)
        spy = self
        plan_call = injection.InjectingStep.plan_call
        at = injection.InjectingCall.at

        def spy_plan_call(step, cond_or_uncond, rows):
            spy.calls.append((step.step, tuple(cond_or_uncond)))
            return plan_call(step, cond_or_uncond, rows)

        def record(store, key, call, out, source):
            exact = torch.equal(out, source[list(call.row_branches)].to(out))
            store[key].append((call.step.step, out.shape[0], call.row_branches, exact))

        def spy_at(call, kind, site, tensor, spatial):
            out = at(call, kind, site, tensor, spatial)
            if out is not tensor:
                store = spy.attention if kind.name == "attention" else spy.resblock
                record(store, site, call, out, call.step.features.tensors[kind.name][site])
            return out

        monkeypatch.setattr(injection.InjectingStep, "plan_call", spy_plan_call)
        monkeypatch.setattr(injection.InjectingCall, "at", spy_at)

    def steps(self, kind: str, site) -> list[int]:
        return [event[0] for event in (self.attention if kind == "attention" else self.resblock)[site]]


@contextmanager
def latent_previews():
    """ComfyUI's Latent2RGB previews on while inside (every progress update then carries a preview, which
    ComfyUI 0.33 never throttles away)."""
    import comfy.cli_args
    import latent_preview

    saved = comfy.cli_args.args.preview_method
    comfy.cli_args.args.preview_method = latent_preview.LatentPreviewMethod.Latent2RGB
    try:
        yield
    finally:
        comfy.cli_args.args.preview_method = saved


@contextmanager
def fp16_unet():
    """ComfyUI loads UNets in fp16 while inside (its ``--fp16-unet``; what it picks by default on most GPUs),
    instead of the CPU's fp32: for a test that only loads a full-size checkpoint to check what it is, this halves
    the UNet's 3.2 GiB (full SD1.5) so the pytest process stays under the CI's 6 GiB."""
    import comfy.cli_args

    saved = comfy.cli_args.args.fp16_unet
    comfy.cli_args.args.fp16_unet = True
    try:
        yield
    finally:
        comfy.cli_args.args.fp16_unet = saved


class UNetRows:
    """The batch size of every UNet forward in the process while active (any model, loaded anywhere)."""

    def __init__(self):
        self.rows: list[int] = []

    def __enter__(self) -> "UNetRows":
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        def count(module, args):
            if isinstance(module, UNetModel):
                self.rows.append(args[0].shape[0])

        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
