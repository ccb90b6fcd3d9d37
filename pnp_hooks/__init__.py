"""Plug-and-Play diffusion features: maths and ComfyUI model patching.

Pure-torch modules (no ComfyUI imports): ``schedule``, ``layers``, ``bank``,
``injection``, ``bank_file`` (banks as safetensors files). ``patcher`` is the
only module that touches ComfyUI's ModelPatcher; ``sampling`` runs ComfyUI's
samplers with the patched clone.
"""
