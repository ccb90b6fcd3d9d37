"""Plug-and-Play diffusion features: maths and ComfyUI model patching.

Pure-torch modules (no ComfyUI imports): ``schedule``, ``layers``, ``bank``,
``injection``, ``bank_file`` (banks as safetensors files), ``visualize`` (PCA
pictures), ``masks``. ``patcher`` is the only module that touches ComfyUI's
ModelPatcher; ``sampling`` runs ComfyUI's samplers with the patched clone;
``probe`` gathers one site's tensors for the PCA pictures.
"""
