"""Plug-and-Play diffusion features: maths and ComfyUI model patching.

Pure-torch modules (no ComfyUI imports): ``schedule``, ``layers``, ``bank``,
``injection``, ``bank_file`` (banks as safetensors files), ``visualize`` (PCA
pictures), ``masks``, ``metrics`` (the paper's scores, the sweep's Pareto
front), ``charts`` (the sweep's grid and plot). ``patcher`` is the only
module that touches ComfyUI's ModelPatcher; ``sampling`` runs ComfyUI's samplers with the patched clone;
``probe`` gathers one site's tensors for the PCA pictures; ``scoring``
reads ComfyUI's vision models for the scores; ``sweep`` runs PnP sampling
over a grid of thresholds.
"""
