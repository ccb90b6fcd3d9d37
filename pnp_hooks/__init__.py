"""Plug-and-Play diffusion features: maths and ComfyUI model patching.

A map of the core, lowest layer first (a module imports only from the lines above its own):

- Basics: ``errors`` (the user-fixable error type, the number check), ``indices``
  (the grammar of typed index lists), ``host_api`` (the ComfyUI names the pack
  uses, checked at start-up), ``batching`` (timesteps per source-pass call).
- Model families: ``families`` (the registry and what a family provides),
  ``families.kinds`` (``SiteKind``: everything the core knows of a kind of
  site: its node input, spec grammar, threshold, patch point, row layout, bank
  file names), ``families.unet`` (SD 1.x/2.x/SDXL: recognition and checks,
  decoder layout, its two kinds "resblock" and "attention", default sites,
  the modules and patch points a site lives in, the q/k projections of the
  PCA views), ``families.vp_schedule`` (its schedule: SD's discrete VP
  timesteps 0..999 and DDIM spacing, the sigma table, the moves between
  ComfyUI's sampling space and the official latent, the DDIM inversion step).
  Nothing else names a model's modules, a particular kind of site or a
  schedule: sites, stored tensors and steps are mappings keyed by kind name,
  and the passes ask the family's schedule. ``families.flux`` (FLUX.1 dev/schnell: checks, layout,
  the official schedule, the single-block site of an attn1_patch call, the
  key rule, bank size).
- FLUX solvers: ``flow_solvers`` (RF-Solver, FireFlow, Euler as KSAMPLER
  functions on velocities).
- What users choose: ``schedule`` (injection thresholds as step counts,
  negative-prompt schedules, the step of a sigma), ``layers`` (layer specs read against a family's
  layout, per kind), ``masks`` (a MASK as injection weights).
- Values nodes pass along: ``bank`` (trajectory, feature bank, model identity),
  ``injection`` (recording and injecting at the sites, per step and model
  call), ``sources`` (stored tensors, frames), ``live_source`` (the on-the-fly
  source pass), ``bank_file`` (banks as checked safetensors files), ``flux_bank``
  (FLUX: the inversion, its V bank stored or on the fly).
- Pictures and scores (pure): ``visualize`` (PCA pictures), ``metrics`` (the
  paper's scores, the sweep's Pareto front), ``charts`` (the sweep's grid and
  plot), ``background`` (background weakening with a subject mask).
- Wired to ComfyUI: ``patcher`` (the only module that touches ModelPatcher:
  model facts, patched clones that hook each kind's sites through the patch
  point its ``SiteKind`` names), ``sampling`` (inversion, recording, PnP
  sampling through ComfyUI's CFGGuider, on the family's schedule), ``probe`` (PnP Feature PCA: one site's
  tensors, from the bank or a live pass, and their q/k through the family's
  ``query_key`` on the loaded model), ``scoring`` (the scores on ComfyUI's vision models),
  ``sweep`` (PnP sampling over a grid of thresholds), ``flux_sampling`` (FLUX: inversion with a flow
  solver, V recorded or recomputed on the fly, PnP sampling, mask and strength as per-token blend weights).

Everything above "Wired to ComfyUI" imports no ComfyUI module (tests/pure.py
checks it).
"""
