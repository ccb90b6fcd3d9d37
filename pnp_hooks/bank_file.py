"""Feature banks on disk: safetensors only (never pickle), checked before anything is loaded.

A bank file is a plain safetensors file:
- tensors: ``trajectory.latents`` (N, C, H, W) float32 in LATENT units; a
  stored bank's site tensors, named by their kind (``SiteKind.tensor_name``:
  the UNet's ``resblock.{b}`` (feature_steps, B, C, h, w) and
  ``attention.{b}.{j}`` (attention_steps, B, h*w, C)) in the bank's dtype; an
  on-the-fly bank stores no features but its source prompt:
  ``source.cross_attn`` (1, L, D) and ``source.{key}`` for other tensor entries
  of the conditioning (e.g. ``pooled_output``).
- metadata (strings): ``format`` = ``FORMAT``; ``comfyui_pnp`` = JSON with
  format_version, pack_version, the model family's name and site kinds
  (format 2 on; a format-1 file is the UNet family's, with its two kinds),
  model (variant as ``family``, prediction, weights
  fingerprint, schedule hash), latent_shape, timesteps, inversion_steps,
  origin, sites (per kind, under its ``file_key``), branches, feature_steps,
  attention_steps, dtype, mode and the
  source prompt's non-tensor entries; ``content_sha256`` = SHA-256 of that
  JSON and every tensor's name, dtype, shape and bytes.

Reading lets safetensors' own reader check the framing (header size and JSON,
byte ranges that tile the file exactly), then checks the bank metadata, the
tensors it implies and, given the MODEL, that every tensor has the shape
that model's sites have; only then are tensors read and the content hash
verified. Any failure raises ``BankFileError``, loads nothing, and names the
bank by its own name: no file content and no server path in a message.

Names: relative to a bank folder, subfolders allowed. Reading follows
symlinks, as ComfyUI's model folders do; saving never writes outside the real
path of the bank folder (a subfolder that is a symlink to elsewhere is
refused) and replaces an existing file that is a symlink rather than writing
through it. Pure torch + safetensors: no ComfyUI imports.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .bank import (BANK_MODES, ON_THE_FLY, SOURCE_CFG, SOURCE_SINGLE, STORED, FeatureBank, ModelIdentity, Trajectory,
                   pixel_size)
from . import families
from .errors import PnPInputError, named_for_users
from .indices import excerpt
from .families import SiteKind
from .layers import LayerSites, bank_shapes
from .live_source import LiveSource
from .sources import StoredSource

FORMAT = "comfyui-pnp.feature-bank"
FORMAT_VERSION = 2
# What a format-1 file, which names neither, was written for.
_FORMAT_1_FAMILY = {"family_name": "unet", "site_kinds": ["resblock", "attention"]}
EXTENSION = ".safetensors"

_DTYPE_CODES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
_STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_NAME_FORBIDDEN = set('<>:"|?*\\')
# Longest name part (folder or file) and whole name; file systems allow 255 bytes per part, the counter adds 19.
MAX_PART_CHARS = 120
MAX_NAME_CHARS = 240
# safetensors' header errors, as phrases that quote nothing from the file.
_FRAMING_PROBLEMS = (
    ("header too small", "it is too short to be a safetensors file"),
    ("header too large", "its first 8 bytes do not announce a header that fits the file: it is truncated or not "
                         "a safetensors file"),
    ("file not fully covered", "its header does not describe the file's bytes: it is truncated or has unexpected "
                               "bytes after its tensors"),
    ("invalid header length", "its first 8 bytes do not announce a header that fits the file: it is truncated "
                              "or not a safetensors file"),
    ("invalid offset", "its tensors' byte ranges overlap or leave gaps (the header was altered)"),
)


@named_for_users
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
    """A relative name inside a bank folder ("a.safetensors", "cats/a"); refuses traversal, odd characters and
    names too long for a file system."""
    if not isinstance(name, str) or not name.strip():
        raise PnPInputError(f"The {what} is empty: type a file name such as 'my_photo_bank'.")
    if len(name) > MAX_NAME_CHARS or any(len(part) > MAX_PART_CHARS for part in name.split("/")):
        raise PnPInputError(f"The {what} {excerpt(name)} is too long: at most {MAX_PART_CHARS} characters per "
                            f"folder or file name and {MAX_NAME_CHARS} in all.")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise PnPInputError(
            f"The {what} {excerpt(name)} is an absolute path; bank files live in ComfyUI's models/pnp_banks "
            f"folder: give a name relative to it (subfolders allowed, e.g. 'portraits/anna')."
        )
    bad = sorted({c for c in name if c in _NAME_FORBIDDEN or ord(c) < 32})
    if bad:
        raise PnPInputError(f"The {what} {excerpt(name)} contains characters not allowed in file names: {bad}.")
    if any(p in ("", ".", "..") for p in name.split("/")):
        raise PnPInputError(
            f"The {what} {excerpt(name)} has an empty, '.' or '..' path component; names stay inside the "
            f"pnp_banks folder (subfolders allowed, e.g. 'portraits/anna')."
        )
    return name


def _inside(folder: str, path: str) -> bool:
    folder = os.path.realpath(folder)
    return os.path.commonpath([folder, os.path.realpath(path)]) == folder


def find_bank(name: str, folders: list[str]) -> Path:
    """The file of bank ``name`` in the first of ``folders`` that holds it (symlinks are followed)."""
    check_name(name, "bank name")
    if not name.lower().endswith(EXTENSION):
        raise PnPInputError(f"{excerpt(name)} is not a {EXTENSION} file; feature banks are saved as safetensors only.")
    for folder in folders:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return Path(path)
    raise PnPInputError(f"No bank file {excerpt(name)} in the pnp_banks folders. Refresh the node list (R), or save "
                        f"one with PnP Save Feature Bank.")


def save_path(folder: str, prefix: str, overwrite: bool) -> Path:
    """Where to save: ``prefix.safetensors`` (overwrite) or ComfyUI's ``prefix_00001_.safetensors`` counter."""
    if prefix.lower().endswith(EXTENSION):
        prefix = prefix[: -len(EXTENSION)]
    check_name(prefix, "file name")
    directory, base = os.path.split(os.path.join(folder, prefix))
    if not _inside(folder, directory):
        raise PnPInputError(f"The file name {excerpt(prefix)} leads outside the pnp_banks folder (through a "
                            f"symlinked subfolder); save into a folder inside it.")
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


def _source_prompt_entries(conditioning) -> tuple[dict[str, torch.Tensor], dict]:
    """An on-the-fly bank's source prompt: its tensors and its JSON-able extras."""
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
    if bank.mode == ON_THE_FLY:
        prompt, source_extras = _source_prompt_entries(bank.source_conditioning)
        tensors.update(prompt)
    else:
        tensors.update({kind.tensor_name(site): t for kind in bank.sites.kinds
                        for site, t in bank.stored.get(kind.name, {}).items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "pack_version": pack_version(),
        **_family_fields(traj.model.family),
        "model": {"family": traj.model.family, "prediction": traj.model.prediction,
                  "fingerprint": traj.model.fingerprint, "schedule": traj.model.schedule},
        "latent_shape": list(traj.latent_shape),
        "timesteps": list(traj.timesteps),
        "inversion_steps": traj.inversion_steps,
        "origin": traj.origin,
        "sites": {kind.file_key: [kind.file_value(site) for site in sites] for kind, sites in bank.sites.items()},
        "branches": list(bank.branches),
        "feature_steps": bank.feature_steps,
        "attention_steps": bank.attention_steps,
        "dtype": str(bank.storage_dtype).removeprefix("torch."),
        "mode": bank.mode,
        "source_extras": source_extras,
    }
    meta_json = json.dumps(meta, sort_keys=True)
    metadata = {"format": FORMAT, "comfyui_pnp": meta_json, "content_sha256": _content_hash(meta_json, tensors)}
    return tensors, metadata


def _kinds_of(meta: dict) -> tuple[SiteKind, ...]:
    """The site kinds of the family a bank file names (by its variant, else by its family name); KeyError if
    no family of this pack has them."""
    try:
        return families.family_named(meta["model"]["family"]).KINDS
    except KeyError:
        return next(f.KINDS for f in families.FAMILIES if f.NAME == meta["family_name"])


def _family_fields(variant: str) -> dict:
    family = families.family_named(variant)
    return {"family_name": family.NAME, "site_kinds": [kind.name for kind in family.KINDS]}


def write_bank(bank: FeatureBank, path: Path, name: str) -> int:
    """Write ``bank`` to ``path`` (atomically: a temporary file in the same folder, then a rename); returns bytes.

    ``name``: the bank's name in its folder, the only one an error shows.
    """
    tensors, metadata = bank_file_contents(bank)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)  # a symlink at ``path`` is replaced, never written through
        return path.stat().st_size
    except OSError as exc:
        raise BankFileError(f"Cannot save the feature bank {excerpt(name)}: the file system refused it "
                            f"({exc.strerror or type(exc).__name__}). Nothing was saved.") from None
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------- reading

def _fail(name: str, problem: str) -> BankFileError:
    return BankFileError(f"Cannot load the feature bank {excerpt(name)}: {problem}. Nothing was loaded.")


def read_header(path: Path, name: str) -> tuple[dict, dict[str, tuple[str, list[int]]], dict[str, str]]:
    """safetensors' framing checks, then the PnP metadata and the tensors it implies.

    Returns (bank metadata JSON, {tensor: (dtype code, shape)}, the raw metadata strings).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            info = f.metadata() or {}
            specs = {key: (f.get_slice(key).get_dtype(), list(f.get_slice(key).get_shape())) for key in f.keys()}
    except SafetensorError as exc:
        text = str(exc)
        problem = next((p for marker, p in _FRAMING_PROBLEMS if marker in text),
                       "it is not a safetensors file, or it is damaged")
        raise _fail(name, problem) from None
    except OSError as exc:
        raise _fail(name, f"the file cannot be read ({exc.strerror or type(exc).__name__})") from None
    if info.get("format") != FORMAT:
        raise _fail(name, "it is a safetensors file but not a comfyui-pnp feature bank (no bank metadata; a "
                          "checkpoint or LoRA?)")
    try:
        meta = json.loads(info.get("comfyui_pnp", ""))
    except json.JSONDecodeError:
        raise _fail(name, "its bank metadata is not valid JSON (the file was altered)") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int):
        raise _fail(name, "its bank metadata has no format version (the file was altered)")
    if version > FORMAT_VERSION:
        raise _fail(name, f"it was written by a newer comfyui-pnp (bank format {version}); this pack reads format "
                          f"{FORMAT_VERSION}: update the pack")
    if version == 1:
        meta = {**meta, **_FORMAT_1_FAMILY}
    _check_layout(name, meta, specs)
    return meta, specs, info


def _expected_tensors(meta: dict) -> dict[str, tuple[str | None, int | None, int | None]]:
    """Tensor name -> (dtype code or None, leading steps or None, rank or None) that the metadata implies."""
    expected = {"trajectory.latents": ("F32", len(meta["timesteps"]), 4)}
    if meta["mode"] == ON_THE_FLY:
        expected["source.cross_attn"] = (None, None, 3)
        return expected
    storage = _DTYPE_CODES[meta["dtype"]]
    for kind in _kinds_of(meta):
        steps = kind.steps(meta["feature_steps"], meta["attention_steps"])
        for value in meta["sites"][kind.file_key] if steps else ():
            expected[kind.tensor_name(kind.site_of_file(value))] = (storage, steps, kind.file_rank)
    return expected


def _is_int_list(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _family_ok(meta: dict) -> bool:
    """The family name and site kinds are the ones the recorded variant's family has (any, for a variant no
    family of this pack knows: the MODEL check names that difference)."""
    try:
        expected = _family_fields(meta["model"]["family"])
    except KeyError:
        return isinstance(meta["family_name"], str) and isinstance(meta["site_kinds"], list)
    return {key: meta[key] for key in expected} == expected


def _metadata_ok(meta: dict) -> bool:
    steps = len(meta["timesteps"])
    return (_family_ok(meta) and meta["mode"] in BANK_MODES and meta["dtype"] in _STORAGE_DTYPES and steps > 0
            and _is_int_list(meta["timesteps"]) and tuple(meta["branches"]) in (SOURCE_SINGLE, SOURCE_CFG)
            and 0 <= meta["feature_steps"] <= steps and 0 <= meta["attention_steps"] <= steps
            and all(isinstance(meta["model"][k], str) for k in ("family", "prediction", "fingerprint", "schedule"))
            and _is_int_list(meta["latent_shape"]) and len(meta["latent_shape"]) == 3
            and isinstance(meta["inversion_steps"], int) and isinstance(meta["origin"], str)
            and all(_sites_ok(kind, meta["sites"][kind.file_key]) for kind in _kinds_of(meta))
            and isinstance(meta.get("source_extras") or {}, dict))


def _sites_ok(kind: SiteKind, values) -> bool:
    if kind.indexed:
        return isinstance(values, list) and all(_is_int_list(s) and len(s) == 2 for s in values)
    return _is_int_list(values)


def _check_layout(name: str, meta: dict, specs: dict[str, tuple[str, list[int]]]) -> None:
    """The metadata is complete and the tensors are exactly the ones it implies."""
    try:
        expected = _expected_tensors(meta) if _metadata_ok(meta) else None
    except (KeyError, TypeError, ValueError, StopIteration):
        expected = None
    if expected is None:
        raise _fail(name, "its bank metadata is incomplete or inconsistent (the file was altered)")
    core = {k for k in specs if not k.startswith("source.") or k == "source.cross_attn"}
    if core != set(expected):
        missing, extra = sorted(set(expected) - core), sorted(core - set(expected))
        raise _fail(name, f"its tensors do not match its metadata ({len(missing)} missing, {len(extra)} unexpected; "
                          f"the file was altered)")
    if meta["mode"] == STORED and any(k.startswith("source.") for k in specs):
        raise _fail(name, "a stored bank must not carry source-prompt tensors (the file was altered)")
    branches = len(meta["branches"])
    site_tensors = tuple(f"{kind.name}." for kind in _kinds_of(meta))
    for tensor, (dtype, leading, rank) in expected.items():
        got_dtype, shape = specs[tensor]
        if len(shape) != rank or (dtype and got_dtype != dtype) or (leading is not None and shape[0] != leading):
            raise _fail(name, f"tensor {tensor!r} is {got_dtype} {shape}, which its metadata does not allow")
        if tensor.startswith(site_tensors) and shape[1] != branches:
            raise _fail(name, f"tensor {tensor!r} holds {shape[1]} branches, its metadata {branches}")
    if specs["trajectory.latents"][1][1:] != meta["latent_shape"]:
        raise _fail(name, "its trajectory does not have the latent shape its metadata states")


def identity_of(meta: dict) -> ModelIdentity:
    model = meta["model"]
    return ModelIdentity(model["family"], model["prediction"], model["fingerprint"], model["schedule"])


def _sites_of(meta: dict) -> LayerSites:
    kinds = _kinds_of(meta)
    return LayerSites(kinds, {kind.name: tuple(kind.site_of_file(v) for v in meta["sites"][kind.file_key])
                              for kind in kinds})


def compatibility_problems(meta: dict, specs: dict[str, tuple[str, list[int]]], identity: ModelIdentity,
                           layout, latent_shape: tuple[int, ...] | None) -> list[str]:
    """What differs between a bank file and the MODEL (its sites, and the LATENT) it is used with, one phrase each."""
    problems = [f"{what}: {mine} in the file, {theirs} in the MODEL connected"
                for what, mine, theirs in identity_of(meta).differences(identity)]
    if latent_shape is not None and list(latent_shape) != list(meta["latent_shape"]):
        problems.append(f"latent size: {pixel_size(meta['latent_shape'])} {meta['latent_shape']} in the file, "
                        f"{pixel_size(latent_shape)} {list(latent_shape)} connected")
    if layout is not None and meta["mode"] == STORED and not problems:
        problems += _site_problems(meta, specs, layout)
    return problems


def _site_problems(meta: dict, specs: dict[str, tuple[str, list[int]]], layout) -> list[str]:
    sites = _sites_of(meta)
    missing = [kind.spec(site) if kind.indexed else site for kind, kind_sites in sites.items() for site in kind_sites
               if not _exists(layout, kind, site)]
    if missing:
        return [f"layers {missing[:6]} of the file do not exist in the MODEL connected"]
    expected = bank_shapes(layout, sites, tuple(meta["latent_shape"][-2:]), meta["feature_steps"],
                           meta["attention_steps"], len(meta["branches"]))
    return [f"tensor {tensor}: shape {specs[tensor][1]} in the file, {list(shape)} at that layer of the MODEL "
            f"connected" for tensor, shape in expected.items() if list(shape) != specs[tensor][1]][:4]


def _exists(layout, kind: SiteKind, site) -> bool:
    block, index = kind.block_index(site)
    return block < layout.num_output_blocks and index < layout.depth(kind.name, block)


def read_bank(path: Path, name: str, device: torch.device, identity: ModelIdentity | None = None,
              layout=None,
              latent_shape: tuple[int, ...] | None = None) -> tuple[FeatureBank, dict]:
    """Load a bank file checked end to end; features land on ``device``. Returns (bank, metadata JSON).

    ``name``: the bank's name in its folder (errors show nothing else). With
    ``identity`` (and the model's ``layout``, the ``latent_shape``) the file
    must fit them; the checks run on the header, before any tensor is read.
    """
    meta, specs, info = read_header(path, name)
    if identity is not None:
        problems = compatibility_problems(meta, specs, identity, layout, latent_shape)
        if problems:
            raise BankFileError(
                f"The feature bank {excerpt(name)} was recorded for another setting: {'; '.join(problems)}. Connect "
                f"the MODEL (and image size) it was recorded with, or record a new bank. Nothing was loaded."
            )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError):
        raise _fail(name, "safetensors could not read its tensors (the file changed or is damaged)") from None
    if _content_hash(info["comfyui_pnp"], tensors) != info.get("content_sha256"):
        raise _fail(name, "its content hash does not match: the tensors or metadata were modified after saving")
    return _build(meta, tensors, device), meta


def _build(meta: dict, tensors: dict[str, torch.Tensor], device: torch.device) -> FeatureBank:
    trajectory = Trajectory(identity_of(meta), tuple(meta["timesteps"]), tensors["trajectory.latents"],
                            meta["inversion_steps"], meta["origin"])
    sites = _sites_of(meta)
    branches = tuple(meta["branches"])
    dtype = _STORAGE_DTYPES[meta["dtype"]]
    if meta["mode"] == ON_THE_FLY:
        extras = {k[len("source."):]: v for k, v in tensors.items()
                  if k.startswith("source.") and k != "source.cross_attn"}
        extras.update(meta.get("source_extras") or {})
        conditioning = [[tensors["source.cross_attn"], extras]]
        return FeatureBank(trajectory, sites, branches, meta["feature_steps"], meta["attention_steps"],
                           LiveSource(trajectory, sites, conditioning), dtype, source_conditioning=conditioning)
    stored = {kind.name: {kind.site_of_name(k): v.to(device) for k, v in tensors.items()
                          if k.startswith(f"{kind.name}.")} for kind in sites.kinds}
    return FeatureBank(trajectory, sites, branches, meta["feature_steps"], meta["attention_steps"],
                       StoredSource({kind: t for kind, t in stored.items() if t}, branches), dtype)
