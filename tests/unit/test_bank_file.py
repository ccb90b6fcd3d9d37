"""Bank files on plain tensors (pure torch + safetensors): names, the symlink rule, refusals that leak nothing."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from find_comfyui import PACK_ROOT
from pure import PURE_MODULES, pure

bank_file, bank, sources, live_source = pure("bank_file"), pure("bank"), pure("sources"), pure("live_source")
layers, errors, unet = pure("layers"), pure("errors"), pure("families.unet")

IDENTITY = bank.ModelIdentity("SD15", "eps", "0123456789abcdef", "feedfacecafebeef")
# A two-level decoder: ResBlock 1 at 2x2 (8 channels), attention 1:0 at 2x2, 2:0 at 4x4 (4 channels).
LAYOUT = unet.UNetLayout((True, True, True), (0, 1, 1), (8, 8, 4), (0, 8, 4), (1, 1, 0))
SITES = layers.LayerSites(unet.KINDS, {"resblock": (1,), "attention": ((1, 0), (2, 0))})


def _bank(mode="stored"):
    g = torch.Generator().manual_seed(1)
    trajectory = bank.Trajectory(IDENTITY, (751, 501, 251, 1), torch.randn(4, 4, 4, 4, generator=g), 4, "inverted")
    if mode == "on the fly":
        prompt = [[torch.randn(1, 77, 8, generator=g), {"pooled_output": torch.randn(1, 8, generator=g)}]]
        return bank.FeatureBank(trajectory, SITES, bank.SOURCE_SINGLE, 4, 4,
                                live_source.LiveSource(trajectory, SITES, prompt), torch.float16, prompt)
    shapes = layers.bank_shapes(LAYOUT, SITES, (4, 4), 3, 2, 1)
    resblock = {1: torch.randn(shapes["resblock.1"], generator=g).half()}
    attention = {s: torch.randn(shapes[f"attention.{s[0]}.{s[1]}"], generator=g).half() for s in SITES["attention"]}
    return bank.FeatureBank(trajectory, SITES, bank.SOURCE_SINGLE, 3, 2,
                            sources.StoredSource({"resblock": resblock, "attention": attention}, bank.SOURCE_SINGLE),
                            torch.float16)


def _read(path: Path, **checks):
    return bank_file.read_bank(path, path.name, torch.device("cpu"), **checks)


def test_pure_modules_import_without_comfyui():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pure import PURE_MODULES, pure\n"
            "[pure(m) for m in PURE_MODULES]\n"
            "roots = ('comfy', 'comfy_api', 'nodes', 'folder_paths')\n"
            "host = sorted(m for m in sys.modules if m.split('.')[0] in roots)\n"
            "assert not host, host")
    proc = subprocess.run([sys.executable, "-c", code, str(PACK_ROOT / "tests")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(PURE_MODULES) >= 10


@pytest.mark.parametrize("mode", ["stored", "on the fly"])
def test_write_then_read_gives_the_same_bank(tmp_path, mode):
    original = _bank(mode)
    path = tmp_path / "b.safetensors"
    size = bank_file.write_bank(original, path, "b.safetensors")
    assert size == path.stat().st_size
    loaded, meta = _read(path, identity=IDENTITY, layout=LAYOUT, latent_shape=(4, 4, 4))
    assert meta["mode"] == mode and loaded.mode == mode and loaded.sites == SITES
    assert torch.equal(loaded.trajectory.latents, original.trajectory.latents)
    for kind, tensors in original.stored.items():
        for site, tensor in tensors.items():
            assert torch.equal(loaded.stored[kind][site], tensor)
    if mode == "on the fly":
        [[cross_attn, extras]] = loaded.source_conditioning
        assert torch.equal(cross_attn, original.source_conditioning[0][0])
        assert torch.equal(extras["pooled_output"], original.source_conditioning[0][1]["pooled_output"])


def test_names_stay_inside_the_folder_and_fit_a_file_system(tmp_path):
    for name in ("../x", "a/../../x", "/etc/x", "C:\\x", "a\\b", "", "  ", "a//b", "./a", "x" * 121, "a/" * 130):
        with pytest.raises(errors.PnPInputError) as info:
            bank_file.save_path(str(tmp_path), name, False)
        assert len(str(info.value)) < 300
    assert bank_file.save_path(str(tmp_path), "cats/tom", False) == tmp_path / "cats" / "tom_00001_.safetensors"
    assert bank_file.save_path(str(tmp_path), "cats/tom.safetensors", True) == tmp_path / "cats" / "tom.safetensors"


def test_saving_never_writes_outside_the_folders_real_path(tmp_path):
    folder, outside = tmp_path / "pnp_banks", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    (folder / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(errors.PnPInputError, match="leads outside the pnp_banks folder"):
        bank_file.save_path(str(folder), "escape/b", True)
    # The bank folder itself may be a symlink (people symlink model folders): saving into it is fine.
    linked = tmp_path / "linked_banks"
    linked.symlink_to(folder, target_is_directory=True)
    target = bank_file.save_path(str(linked), "b", True)
    # An existing file that is a symlink is replaced by the new file, never written through.
    secret = outside / "secret.txt"
    secret.write_text("keep me")
    (folder / "b.safetensors").symlink_to(secret)
    bank_file.write_bank(_bank(), target, "b.safetensors")
    assert secret.read_text() == "keep me"
    assert not (folder / "b.safetensors").is_symlink()
    assert _read(folder / "b.safetensors")[1]["mode"] == "stored"
    assert sorted(os.listdir(outside)) == ["secret.txt"]


def test_reading_follows_symlinked_bank_files(tmp_path):
    elsewhere = tmp_path / "disk2"
    elsewhere.mkdir()
    bank_file.write_bank(_bank(), elsewhere / "real.safetensors", "real.safetensors")
    folder = tmp_path / "pnp_banks"
    folder.mkdir()
    (folder / "linked.safetensors").symlink_to(elsewhere / "real.safetensors")
    path = bank_file.find_bank("linked.safetensors", [str(folder)])
    assert _read(path)[1]["mode"] == "stored"
    with pytest.raises(errors.PnPInputError) as info:
        bank_file.find_bank("missing.safetensors", [str(folder)])
    assert str(tmp_path) not in str(info.value)


SECRET = b"root:x:0:0:root:/root:/bin/bash\n"


@pytest.mark.parametrize("content, problem", [
    (SECRET * 8, "first 8 bytes do not announce a header"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "first 8 bytes do not announce a header"),
    (b"short", "too short to be a safetensors file"),
    (pickle.dumps({"resblock.4": [1.0, 2.0]}), "not a safetensors file"),
])
def test_files_that_are_not_safetensors_are_refused_without_quoting_them(tmp_path, content, problem):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(bank_file.BankFileError, match=problem) as info:
        _read(path)
    message = str(info.value)
    assert "root" not in message and str(tmp_path) not in message and "Nothing was loaded" in message
    assert str(int.from_bytes(content[:8].ljust(8, b"\0"), "little")) not in message


def _rewrite_metadata(path: Path, change) -> None:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["comfyui_pnp"])
    change(meta, header)
    header["__metadata__"]["comfyui_pnp"] = json.dumps(meta, sort_keys=True)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])


def test_damaged_and_altered_files_are_refused(tmp_path):
    path = tmp_path / "b.safetensors"
    bank_file.write_bank(_bank(), path, "b.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(bank_file.BankFileError, match="truncated or has unexpected bytes"):
        _read(path)
    path.write_bytes(data + b"\0" * 4)
    with pytest.raises(bank_file.BankFileError, match="truncated or has unexpected bytes"):
        _read(path)
    path.write_bytes(data[:-7] + bytes([data[-7] ^ 0x40]) + data[-6:])
    with pytest.raises(bank_file.BankFileError, match="content hash"):
        _read(path)
    path.write_bytes(data)
    _rewrite_metadata(path, lambda meta, header: meta.update(attention_steps=1))
    with pytest.raises(bank_file.BankFileError, match="does not allow"):
        _read(path)
    path.write_bytes(data)
    _rewrite_metadata(path, lambda meta, header: meta.update(format_version=99))
    with pytest.raises(bank_file.BankFileError, match="newer comfyui-pnp"):
        _read(path)


def _rewrite_metadata_and_hash(path: Path, change) -> None:
    """``_rewrite_metadata`` with the content hash made again: what another writer would have written."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))

    def rehash(meta, header):
        change(meta, header)
        header["__metadata__"]["content_sha256"] = bank_file._content_hash(json.dumps(meta, sort_keys=True), tensors)

    _rewrite_metadata(path, rehash)


def test_files_name_their_family_and_site_kinds_and_format_1_files_still_load(tmp_path):
    path = tmp_path / "b.safetensors"
    original = _bank()
    bank_file.write_bank(original, path, "b.safetensors")
    meta, _, _ = bank_file.read_header(path, "b.safetensors")
    assert (meta["format_version"], meta["family_name"], meta["site_kinds"]) == (2, "unet", ["resblock", "attention"])

    def as_format_1(meta, header):
        meta.update(format_version=1)
        del meta["family_name"], meta["site_kinds"]

    _rewrite_metadata_and_hash(path, as_format_1)
    loaded, meta = _read(path)
    assert (meta["format_version"], meta["family_name"], meta["site_kinds"]) == (1, "unet", ["resblock", "attention"])
    assert loaded.sites == original.sites and loaded.trajectory.model == original.trajectory.model
    for site, t in original.stored["attention"].items():
        assert torch.equal(loaded.stored["attention"][site], t)
    path.unlink()
    bank_file.write_bank(original, path, "b.safetensors")
    _rewrite_metadata_and_hash(path, lambda meta, header: meta.update(site_kinds=["resblock", "attention_v"]))
    with pytest.raises(bank_file.BankFileError, match="incomplete or inconsistent"):
        _read(path)


def test_a_consistent_forgery_that_does_not_fit_the_model_is_refused_at_load(tmp_path):
    """Metadata and hash agree, but the tensors have other channels than the MODEL's layers."""
    forged = _bank()
    wrong = {1: torch.zeros(3, 1, 6, 2, 2, dtype=torch.float16)}  # 6 channels where the model has 8
    forged = bank.FeatureBank(forged.trajectory, SITES, forged.branches, 3, 2,
                              sources.StoredSource({"resblock": wrong, "attention": forged.stored["attention"]},
                                                   forged.branches), torch.float16)
    path = tmp_path / "forged.safetensors"
    bank_file.write_bank(forged, path, "forged.safetensors")
    _read(path)  # consistent on its own
    with pytest.raises(bank_file.BankFileError, match=r"tensor resblock.1: shape \[3, 1, 6, 2, 2\] in the file, "
                                                       r"\[3, 1, 8, 2, 2\] at that layer"):
        _read(path, identity=IDENTITY, layout=LAYOUT)
    smaller = unet.UNetLayout((True, True), (0, 1), (8, 8), (0, 8), (1, 1))
    with pytest.raises(bank_file.BankFileError, match=r"layers \['2:0'\] of the file do not exist"):
        _read(path, identity=IDENTITY, layout=smaller)


def test_a_file_that_cannot_be_written_says_so_without_the_servers_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(bank_file.BankFileError, match="the file system refused it") as info:
        bank_file.write_bank(_bank(), blocker / "sub" / "b.safetensors", "sub/b.safetensors")
    assert str(tmp_path) not in str(info.value)
