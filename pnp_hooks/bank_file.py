"""Feature banks on disk: safetensors only (never pickle), checked before anything is loaded.

A bank file is a plain safetensors file:
- tensors: ``trajectory.latents`` (N, C, H, W) float32 in LATENT units;
  ``resblock.{b}`` (feature_steps, B, C, h, w) and ``attention.{b}.{j}``
  (attention_steps, B, h*w, C) in the bank's dtype; an on-the-fly bank stores
  no features but its source prompt: ``source.cross_attn`` (1, L, D) and
  ``source.{key}`` for other tensor entries of the conditioning (e.g.
  ``pooled_output``).
- metadata (strings): ``format`` = ``FORMAT``; ``comfyui_pnp`` = JSON with
  format_version, pack_version, model (family, prediction, weights
  fingerprint, schedule hash), latent_shape, timesteps, inversion_steps,
  origin, sites, branches, feature_steps, attention_steps, dtype, mode and the
  source prompt's non-tensor entries; ``content_sha256`` = SHA-256 of that
  JSON and every tensor's name, dtype, shape and bytes.

Reading checks the safetensors framing (header length, JSON, dtypes, shapes,
byte offsets against the file size), the metadata, the tensor names and shapes
it implies, then loads with ``safetensors.torch.load_file`` and verifies the
content hash. Any failure raises ``BankFileError`` and returns nothing.
Pure torch + safetensors: no ComfyUI imports.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .bank import BANK_MODES as MODES
from .bank import SOURCE_CFG, SOURCE_SINGLE, FeatureBank, ModelIdentity, Trajectory
from .errors import PnPInputError
from .layers import LayerSites

FORMAT = "comfyui-pnp.feature-bank"
FORMAT_VERSION = 1
EXTENSION = ".safetensors"

_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_STORAGE_CODES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}  # safetensors dtype of each
_MAX_HEADER = 100 * 2**20
_NAME_FORBIDDEN = set('<>:"|?*\\')


class BankFileError(PnPInputError):
    """A bank file that cannot be used; nothing was loaded."""


def pack_version() -> str:
    """The pack's version from its pyproject.toml ("unknown" if the file is not shipped)."""
    try:
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return m.group(1) if m else "unknown"


# ---------------------------------------------------------------- names and paths

def check_name(name: str, what: str) -> str:
    """A relative name inside a bank folder ("a.safetensors", "cats/a"); refuses traversal and odd characters."""
    if not isinstance(name, str) or not name.strip():
        raise PnPInputError(f"The {what} is empty: type a file name such as 'my_photo_bank'.")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise PnPInputError(
            f"The {what} {name!r} is an absolute path; bank files live in ComfyUI's models/pnp_banks folder: "
            f"give a name relative to it (subfolders allowed, e.g. 'portraits/anna')."
        )
    bad = sorted({c for c in name if c in _NAME_FORBIDDEN or ord(c) < 32})
    if bad:
        raise PnPInputError(f"The {what} {name!r} contains characters not allowed in file names: {bad}.")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise PnPInputError(
            f"The {what} {name!r} has an empty, '.' or '..' path component; names stay inside the pnp_banks "
            f"folder (subfolders allowed, e.g. 'portraits/anna')."
        )
    return name


def _inside(folder: str, path: str) -> bool:
    folder = os.path.normpath(os.path.abspath(folder))
    return os.path.commonpath([folder, os.path.normpath(os.path.abspath(path))]) == folder


def find_bank(name: str, folders: list[str]) -> Path:
    """The file of bank ``name`` in the first of ``folders`` that holds it."""
    check_name(name, "bank name")
    if not name.lower().endswith(EXTENSION):
        raise PnPInputError(f"{name!r} is not a {EXTENSION} file; feature banks are saved as safetensors only.")
    for folder in folders:
        path = os.path.join(folder, name)
        if _inside(folder, path) and os.path.isfile(path):
            return Path(path)
    raise PnPInputError(f"No bank file {name!r} in the pnp_banks folders {folders}. Refresh the node list (R).")


def save_path(folder: str, prefix: str, overwrite: bool) -> Path:
    """Where to save: ``prefix.safetensors`` (overwrite) or ComfyUI's ``prefix_00001_.safetensors`` counter."""
    if prefix.lower().endswith(EXTENSION):
        prefix = prefix[: -len(EXTENSION)]
    check_name(prefix, "file name")
    directory, base = os.path.split(os.path.join(folder, prefix))
    if not _inside(folder, directory):
        raise PnPInputError(f"The file name {prefix!r} leads outside the pnp_banks folder.")
    if overwrite:
        return Path(directory) / f"{base}{EXTENSION}"
    pattern = re.compile(re.escape(base) + r"_(\d{5,})_" + re.escape(EXTENSION) + "$")
    existing = os.listdir(directory) if os.path.isdir(directory) else []
    counter = max((int(m.group(1)) for m in map(pattern.match, existing) if m), default=0) + 1
    return Path(directory) / f"{base}_{counter:05}_{EXTENSION}"


# ---------------------------------------------------------------- writing

def _tensor_bytes(t: torch.Tensor):
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _content_hash(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"\0{name}\0{str(t.dtype)}\0{list(t.shape)}\0".encode("utf-8"))
        digest.update(_tensor_bytes(t))
    return digest.hexdigest()


def _source_entries(bank: FeatureBank) -> tuple[dict[str, torch.Tensor], dict]:
    """The on-the-fly bank's source prompt: tensors and JSON-able extras."""
    conditioning = bank.source_conditioning
    if not conditioning or len(conditioning) != 1:
        raise PnPInputError("This on-the-fly bank has no single source prompt to save; record it in 'stored' mode.")
    cross_attn, extras = conditioning[0]
    tensors = {"source.cross_attn": cross_attn}
    plain = {}
    for key, value in extras.items():
        if isinstance(value, torch.Tensor):
            tensors[f"source.{key}"] = value
        elif value is None or isinstance(value, (str, int, float, bool)):
            plain[key] = value
        else:
            raise PnPInputError(
                f"The on-the-fly bank's source conditioning carries {key!r} ({type(value).__name__}), which a bank "
                f"file cannot hold. Save a bank recorded in 'stored' mode, or use a plain CLIP Text Encode prompt."
            )
    return tensors, plain


def bank_file_contents(bank: FeatureBank) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata strings of ``bank``'s file."""
    traj = bank.trajectory
    tensors: dict[str, torch.Tensor] = {"trajectory.latents": traj.latents.float()}
    source_extras = None
    if bank.on_the_fly:
        source, source_extras = _source_entries(bank)
        tensors.update(source)
    else:
        tensors.update({f"resblock.{b}": t for b, t in bank.resblock.items()})
        tensors.update({f"attention.{b}.{j}": t for (b, j), t in bank.attention.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "pack_version": pack_version(),
        "model": {"family": traj.model.family, "prediction": traj.model.prediction,
                  "fingerprint": traj.model.fingerprint, "schedule": traj.model.schedule},
        "latent_shape": list(traj.latent_shape),
        "timesteps": list(traj.timesteps),
        "inversion_steps": traj.inversion_steps,
        "origin": traj.origin,
        "sites": {"resblocks": list(bank.sites.resblocks), "attention": [list(s) for s in bank.sites.attention]},
        "branches": list(bank.branches),
        "feature_steps": bank.feature_steps,
        "attention_steps": bank.attention_steps,
        "dtype": str(bank.storage_dtype).removeprefix("torch."),
        "mode": MODES[1] if bank.on_the_fly else MODES[0],
        "source_extras": source_extras,
    }
    meta_json = json.dumps(meta, sort_keys=True)
    metadata = {"format": FORMAT, "comfyui_pnp": meta_json, "content_sha256": _content_hash(meta_json, tensors)}
    return tensors, metadata


def write_bank(bank: FeatureBank, path: Path) -> int:
    """Write ``bank`` to ``path`` (atomically: a temporary file in the same folder, then a rename); returns bytes."""
    tensors, metadata = bank_file_contents(bank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path.stat().st_size


# ---------------------------------------------------------------- reading

def _fail(path: Path, problem: str) -> BankFileError:
    return BankFileError(f"Cannot load the feature bank {path.name!r}: {problem}. Nothing was loaded.")


def read_header(path: Path) -> tuple[dict, dict[str, tuple[str, list[int]]], dict[str, str]]:
    """Check the safetensors framing and the PnP metadata.

    Returns (bank metadata JSON, {tensor: (dtype code, shape)}, the raw metadata strings).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _fail(path, f"the file has only {size} bytes; it is not a safetensors file")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise _fail(path, f"its first 8 bytes announce a {n}-byte header but the file has {size} bytes: it is "
                              f"truncated or not a safetensors file")
        if n > _MAX_HEADER or n < 2:
            raise _fail(path, f"its first 8 bytes announce a {n}-byte header: it is not a safetensors file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _fail(path, "its header is not valid JSON: it is not a safetensors file (or it was damaged)") from None
    if not isinstance(header, dict):
        raise _fail(path, "its header is not a JSON object: it is not a safetensors file")
    info = header.pop("__metadata__", None)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise _fail(path, "it is a safetensors file but not a comfyui-pnp feature bank (no bank metadata; a "
                          "checkpoint or LoRA?)")
    specs = _tensor_specs(path, header, data_bytes=size - 8 - n)
    try:
        meta = json.loads(info.get("comfyui_pnp", ""))
    except json.JSONDecodeError:
        raise _fail(path, "its bank metadata is not valid JSON (the file was altered)") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int):
        raise _fail(path, "its bank metadata has no format version (the file was altered)")
    if version > FORMAT_VERSION:
        raise _fail(path, f"it was written by a newer comfyui-pnp (bank format {version}, pack "
                          f"{meta.get('pack_version')}); this pack reads format {FORMAT_VERSION}: update the pack")
    _check_layout(path, meta, specs)
    return meta, specs, info


def _tensor_specs(path: Path, header: dict, data_bytes: int) -> dict[str, tuple[str, list[int]]]:
    """Each tensor's dtype and shape, after checking its byte range tiles the data section exactly."""
    specs = {}
    spans = []
    for name, spec in header.items():
        try:
            dtype, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
            ok = dtype in _DTYPES and all(isinstance(d, int) and d >= 0 for d in shape)
            ok = ok and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise _fail(path, f"the header entry of tensor {name!r} is malformed")
        itemsize = torch.empty((), dtype=_DTYPES[dtype]).element_size()
        if end - begin != math.prod(shape) * itemsize:
            raise _fail(path, f"tensor {name!r} ({dtype} {shape}) does not fit its {end - begin} bytes")
        specs[name] = (dtype, list(shape))
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise _fail(path, "its tensors' byte ranges overlap or leave gaps (the header was altered)")
        position = end
    if data_bytes < position:
        raise _fail(path, f"the file is truncated: its header describes {position} bytes of tensor data but only "
                          f"{data_bytes} are there")
    if data_bytes > position:
        raise _fail(path, f"the file has {data_bytes - position} unexpected bytes after its tensors (altered or "
                          f"damaged)")
    return specs


def _expected_tensors(meta: dict) -> dict[str, tuple[str | None, int | None, int | None]]:
    """Tensor name -> (dtype code or None, leading steps or None, rank or None) that the metadata implies."""
    storage = _STORAGE_CODES[meta["dtype"]]
    expected = {"trajectory.latents": ("F32", len(meta["timesteps"]), 4)}
    if meta["mode"] == MODES[1]:
        expected["source.cross_attn"] = (None, None, 3)
        return expected
    if meta["feature_steps"]:
        for b in meta["sites"]["resblocks"]:
            expected[f"resblock.{b}"] = (storage, meta["feature_steps"], 5)
    if meta["attention_steps"]:
        for b, j in meta["sites"]["attention"]:
            expected[f"attention.{b}.{j}"] = (storage, meta["attention_steps"], 4)
    return expected


def _is_int_list(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _metadata_ok(meta: dict) -> bool:
    steps = len(meta["timesteps"])
    return (meta["mode"] in MODES and meta["dtype"] in _STORAGE_DTYPES and steps > 0
            and _is_int_list(meta["timesteps"]) and tuple(meta["branches"]) in (SOURCE_SINGLE, SOURCE_CFG)
            and 0 <= meta["feature_steps"] <= steps and 0 <= meta["attention_steps"] <= steps
            and all(isinstance(meta["model"][k], str) for k in ("family", "prediction", "fingerprint", "schedule"))
            and _is_int_list(meta["latent_shape"]) and len(meta["latent_shape"]) == 3
            and isinstance(meta["inversion_steps"], int) and isinstance(meta["origin"], str)
            and _is_int_list(meta["sites"]["resblocks"])
            and all(_is_int_list(s) and len(s) == 2 for s in meta["sites"]["attention"])
            and isinstance(meta.get("source_extras") or {}, dict))


def _check_layout(path: Path, meta: dict, specs: dict[str, tuple[str, list[int]]]) -> None:
    """The metadata is complete and the tensors are exactly the ones it implies."""
    try:
        expected = _expected_tensors(meta) if _metadata_ok(meta) else None
    except (KeyError, TypeError, ValueError):
        expected = None
    if expected is None:
        raise _fail(path, "its bank metadata is incomplete or inconsistent (the file was altered)")
    on_the_fly = meta["mode"] == MODES[1]
    core = {k for k in specs if not k.startswith("source.") or k == "source.cross_attn"}
    if core != set(expected):
        missing, extra = sorted(set(expected) - core), sorted(core - set(expected))
        raise _fail(path, f"its tensors do not match its metadata (missing {missing}, unexpected {extra})")
    if not on_the_fly and any(k.startswith("source.") for k in specs):
        raise _fail(path, "a stored bank must not carry source-prompt tensors (the file was altered)")
    branches = len(meta["branches"])
    for name, (dtype, leading, rank) in expected.items():
        got_dtype, shape = specs[name]
        if len(shape) != rank or (dtype and got_dtype != dtype) or (leading is not None and shape[0] != leading):
            raise _fail(path, f"tensor {name!r} is {got_dtype} {shape}, which its metadata does not allow")
        if name.startswith(("resblock.", "attention.")) and shape[1] != branches:
            raise _fail(path, f"tensor {name!r} holds {shape[1]} branches, its metadata {branches}")
    if specs["trajectory.latents"][1][1:] != meta["latent_shape"]:
        raise _fail(path, "its trajectory does not have the latent shape its metadata states")


def identity_of(meta: dict) -> ModelIdentity:
    model = meta["model"]
    return ModelIdentity(model["family"], model["prediction"], model["fingerprint"], model["schedule"])


def compatibility_problems(meta: dict, identity: ModelIdentity, latent_shape: tuple[int, ...] | None) -> list[str]:
    """What differs between a bank file and the MODEL (and LATENT) it is used with, one phrase each."""
    problems = [f"{what}: {mine} in the file, {theirs} in the MODEL connected"
                for what, mine, theirs in identity_of(meta).differences(identity)]
    if latent_shape is not None and list(latent_shape) != list(meta["latent_shape"]):
        c, h, w = meta["latent_shape"]
        problems.append(f"latent size: {w * 8}x{h * 8} px {meta['latent_shape']} in the file, "
                        f"{latent_shape[-1] * 8}x{latent_shape[-2] * 8} px {list(latent_shape)} connected")
    return problems


def read_bank(path: Path, device: torch.device, identity: ModelIdentity | None = None,
              latent_shape: tuple[int, ...] | None = None) -> tuple[FeatureBank, dict]:
    """Load a bank file checked end to end; features land on ``device``. Returns (bank, metadata JSON).

    With ``identity`` (and ``latent_shape``), the file's metadata must match
    them; the check runs on the header, before any tensor is read.
    """
    meta, specs, info = read_header(path)
    if identity is not None:
        problems = compatibility_problems(meta, identity, latent_shape)
        if problems:
            raise BankFileError(
                f"The feature bank {path.name!r} was recorded for another setting: {'; '.join(problems)}. Connect "
                f"the MODEL (and image size) it was recorded with, or record a new bank. Nothing was loaded."
            )
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types; its message says what broke
        raise _fail(path, f"safetensors could not read it ({exc})") from None
    if {k: (v.dtype, list(v.shape)) for k, v in tensors.items()} != {
            k: (_DTYPES[d], shape) for k, (d, shape) in specs.items()}:
        raise _fail(path, "safetensors read other tensors than its header lists")
    if _content_hash(info["comfyui_pnp"], tensors) != info.get("content_sha256"):
        raise _fail(path, "its content hash does not match: the tensors or metadata were modified after saving")
    return _build(meta, tensors, device), meta


def _build(meta: dict, tensors: dict[str, torch.Tensor], device: torch.device) -> FeatureBank:
    trajectory = Trajectory(identity_of(meta), tuple(meta["timesteps"]), tensors["trajectory.latents"],
                            meta["inversion_steps"], meta["origin"])
    sites = LayerSites(tuple(meta["sites"]["resblocks"]), tuple(tuple(s) for s in meta["sites"]["attention"]))
    dtype = _STORAGE_DTYPES[meta["dtype"]]
    if meta["mode"] == MODES[1]:
        extras = {k[len("source."):]: v for k, v in tensors.items()
                  if k.startswith("source.") and k != "source.cross_attn"}
        extras.update(meta.get("source_extras") or {})
        conditioning = [[tensors["source.cross_attn"], extras]]
        return FeatureBank(trajectory, sites, tuple(meta["branches"]), meta["feature_steps"], meta["attention_steps"],
                           {}, {}, dtype, on_the_fly=True, source_conditioning=conditioning)
    resblock = {int(k.split(".")[1]): v.to(device) for k, v in tensors.items() if k.startswith("resblock.")}
    attention = {(int(k.split(".")[1]), int(k.split(".")[2])): v.to(device)
                 for k, v in tensors.items() if k.startswith("attention.")}
    return FeatureBank(trajectory, sites, tuple(meta["branches"]), meta["feature_steps"], meta["attention_steps"],
                       resblock, attention, dtype)
