"""workflows/run.py, the headless runner: one real run, and clear errors (no traceback) for bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import browser
import workflow_specs
from find_comfyui import PACK_ROOT, with_stand_in

RUNNER = PACK_ROOT / "workflows" / "run.py"


def shipped(name: str, api: bool = False) -> str:
    """The path of the shipped workflow ``name`` (a workflow_specs name), UI file or API twin."""
    folder = PACK_ROOT / "workflows" / ("api" if api else "")
    return str(folder / f"{workflow_specs.stem(name)}.json")


def run_runner(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = with_stand_in(dict(os.environ))
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, str(RUNNER), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    # no traceback of ours (ComfyUI itself may log import tracebacks of optional nodes, e.g. without torchaudio)
    assert 'run.py", line' not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for fragment in fragments:
        assert fragment in last, last


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory) -> dict[str, Path]:
    return browser.small_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def base_dir(tmp_path) -> Path:
    """A ComfyUI --base-directory with no models."""
    (tmp_path / "custom_nodes").mkdir()
    return tmp_path


def test_workflow_that_is_not_json(tmp_path, small_inputs):
    bad = tmp_path / "broken.json"
    bad.write_text('{"1": {"class_type": "CheckpointLoaderSimple",,}')
    assert_clean_error(run_runner(str(bad)), 2, "is not JSON", "line 1")
    binary = tmp_path / "image.json"
    binary.write_bytes(small_inputs[workflow_specs.GUIDANCE_IMAGE].read_bytes())
    assert_clean_error(run_runner(str(binary)), 2, "not a JSON workflow")
    other = tmp_path / "list.json"
    other.write_text("[1, 2, 3]")
    assert_clean_error(run_runner(str(other)), 2, "not an API-format ComfyUI workflow")
    assert_clean_error(run_runner(str(tmp_path / "missing.json")), 2, "does not exist")


def test_ui_workflow_without_api_twin(tmp_path):
    ui = tmp_path / "mine.json"
    ui.write_text(Path(shipped("pnp_real_image")).read_text())
    assert_clean_error(run_runner(str(ui)), 2, "UI-format", "Export (API)")


def test_wrong_inputs_are_refused_before_comfyui_starts(tmp_path, small_inputs):
    workflow = shipped("pnp_real_image", api=True)
    not_image = tmp_path / "photo.png"
    not_image.write_text("hello")
    assert_clean_error(run_runner(workflow, "--image", str(not_image)), 2, "is not an image")
    assert_clean_error(run_runner(workflow, "--image", str(tmp_path / "nope.png")), 2, "does not exist")
    assert_clean_error(run_runner(workflow, "--prompt", "a", "--prompt", "b"), 2, "2 --prompt given")
    assert_clean_error(run_runner(workflow, "--mask", str(small_inputs[workflow_specs.GUIDANCE_MASK])), 2,
                       "no LoadImageMask node")
    assert_clean_error(run_runner(workflow, "--size", "500x512"), 2, "multiples of 8")
    assert_clean_error(run_runner(workflow, "--size", "512x512"), 2, "no EmptyLatentImage / ImageScale node")


def test_missing_checkpoint(base_dir, small_inputs):
    proc = run_runner(shipped("pnp_real_image", api=True),
                      "--image", str(small_inputs[workflow_specs.GUIDANCE_IMAGE]), "--", "--cpu",
                      "--base-directory", str(base_dir))
    assert_clean_error(proc, 2, "No checkpoint is available", workflow_specs.CHECKPOINT,
                       str(base_dir / "models" / "checkpoints"))


def test_run_mask_workflow_headless(host, models, base_dir, small_inputs, tmp_path):
    checkpoints_dir = base_dir / "models" / "checkpoints"
    checkpoints_dir.mkdir(parents=True)
    (checkpoints_dir / "my_model.safetensors").symlink_to(host.checkpoint_dir / models.checkpoint("sd15_reduced"))
    image = tmp_path / "photo.png"
    image.write_bytes(small_inputs[workflow_specs.GUIDANCE_IMAGE].read_bytes())
    mask = tmp_path / "subject.png"
    mask.write_bytes(small_inputs[workflow_specs.GUIDANCE_MASK].read_bytes())
    # the wrong checkpoint name first: the error lists what is there
    proc = run_runner(shipped("pnp_mask"), "--image", str(image), "--", "--cpu",
                      "--base-directory", str(base_dir))
    assert_clean_error(proc, 2, workflow_specs.CHECKPOINT, "--ckpt NAME", "my_model.safetensors")

    proc = run_runner(shipped("pnp_mask"), "--image", str(image), "--mask", str(mask),
                      "--prompt", "a castle made of ice", "--ckpt", "my_model.safetensors", "--steps", "3",
                      "--", "--cpu", "--base-directory", str(base_dir))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'run.py", line' not in proc.stderr
    assert "PnP Sampler" in proc.stderr and "3/3" in proc.stderr  # the progress bar
    saved = [Path(line) for line in proc.stdout.strip().splitlines()]
    assert len(saved) == 1
    assert saved[0].parent == base_dir / "output" / "pnp"  # ComfyUI's output directory, the workflow's prefix
    with Image.open(saved[0]) as out:
        assert out.size == (browser.FAST_SIZE, browser.FAST_SIZE)
        assert json.loads(out.info["prompt"])["3"]["inputs"]["text"] == "a castle made of ice"
    assert (base_dir / "input" / "photo.png").is_file() and (base_dir / "input" / "subject.png").is_file()


def test_run_sdxl_workflow_headless(host, models, base_dir):
    """pnp_sdxl on the random SDXL checkpoint under the workflow's name; the shipped 512 px guidance image."""
    checkpoints_dir = base_dir / "models" / "checkpoints"
    checkpoints_dir.mkdir(parents=True)
    (checkpoints_dir / workflow_specs.SDXL_CHECKPOINT).symlink_to(
        host.checkpoint_dir / models.checkpoint("sdxl_reduced"))
    size = browser.FAST_SIZE
    proc = run_runner(shipped("pnp_sdxl"),
                      "--image", str(PACK_ROOT / "workflows" / workflow_specs.GUIDANCE_IMAGE),
                      "--size", f"{size}x{size}", "--steps", "3", "--", "--cpu", "--base-directory", str(base_dir))
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved = [Path(line) for line in proc.stdout.strip().splitlines()]
    assert len(saved) == 1 and saved[0].parent == base_dir / "output" / "pnp"
    with Image.open(saved[0]) as out:
        assert out.size == (size, size)  # --size went to Upscale Image: the 512 px image was scaled down
        scale = next(n for n in json.loads(out.info["prompt"]).values() if n["class_type"] == "ImageScale")
        assert (scale["inputs"]["width"], scale["inputs"]["height"]) == (size, size)
    # the PnP Feature PCA previews and captions are reported on stderr
    previews = [Path(line[len("preview: "):].rsplit("  [", 1)[0]) for line in proc.stderr.splitlines()
                if line.startswith("preview: ")]
    assert len(previews) == 3 and all(p.is_file() and p.parent == base_dir / "temp" for p in previews), previews
    captions = [line for line in proc.stderr.splitlines() if ": caption: " in line]
    assert len(captions) == 3 and all(line.endswith("; feature bank") for line in captions), captions
