"""Benchmark of batches of guidance images: N frames as one batch against N single-image translations.

One command (from the repository root, after ``bash .ci/setup``):

    OMP_NUM_THREADS=1 .venvs/comfyui-<version>/bin/python bench/batches.py

It boots the real ComfyUI host in CPU mode as the tests do, loads the random reduced SD1.5 checkpoint
(tests/checkpoints.py; cached in $PNP_TEST_CACHE or bench/.cache), encodes N drawn 64 px frames with its VAE and,
for N = 1, 4, 16, times whole translations (PnP DDIM Inversion, PnP Feature Bank, PnP Sampler at the defaults):

- the batch of N frames with a stored bank recorded one frame at a time (the default), with all frames recorded
  at once, and on the fly;
- N single-image translations of the same frames one after another (nothing kept between them).

Per run: wall and CPU seconds, UNet batch elements (rows), the peak of the feature bytes the pack holds at once
(the live StoredSource tensors, counted as they are made and freed) and the peak RSS above the RSS before the run.
The report goes to bench/BATCHES.md (``--out``), with the command that produced it. Not a test: nothing here is
asserted, the figures are recorded.
"""
from __future__ import annotations

import os

import bench_env  # first: the environment before torch, the test support modules on sys.path

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import weakref  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = bench_env.ROOT

import torch  # noqa: E402

import checkpoints  # noqa: E402
import comfy_host  # noqa: E402
from harness import encode, guidance_pixels, run_node  # noqa: E402
from run import RSSMonitor  # noqa: E402  (bench/ is this script's own folder)
from sdxl_bank_size import pnp_hooks  # noqa: E402

LATENT_TO_PIXELS = pnp_hooks("bank").LATENT_TO_PIXELS
MB = 1e6
RUNS = {
    "batch, stored, one frame at a time": {"mode": "stored", "batch_memory": "one frame at a time"},
    "batch, stored, all frames": {"mode": "stored", "batch_memory": "all frames"},
    "batch, on the fly": {"mode": "on the fly"},
}
SINGLE = "single runs, stored"


class HeldFeatures:
    """Bytes of the pack's live StoredSource tensors (every stored bank's), now and at the peak since ``reset``."""

    def __init__(self, host):
        sources = host.pack_module("pnp_hooks.sources")
        self.now = self.peak = 0
        post_init = sources.StoredSource.__post_init__
        held = self

        def counted(source):
            post_init(source)
            size = source.nbytes
            held.now += size
            held.peak = max(held.peak, held.now)
            weakref.finalize(source, held._free, size)

        sources.StoredSource.__post_init__ = counted

    def _free(self, size: int) -> None:
        self.now -= size

    def reset(self) -> None:
        self.peak = self.now


@dataclass
class Result:
    frames: int
    run: str
    wall: float
    cpu: float
    rows: int
    held_peak: int
    rss_above: int


class Bench:
    def __init__(self, host, size: int, steps: int, monitor: RSSMonitor):
        name = checkpoints.ensure_checkpoint("sd15_reduced", host.checkpoint_dir)
        self.model, clip, self.vae = run_node("CheckpointLoaderSimple", ckpt_name=name)[:3]
        self.size, self.steps = size, steps
        self.empty, self.negative = encode(clip, ""), encode(clip, "ugly, blurry, black, low res, unrealistic")
        self.positive = encode(clip, "a watercolor painting of a fruit bowl")
        self.monitor = monitor
        self.held = HeldFeatures(host)
        self.rows: list[int] = []
        unet = self.model.model.diffusion_model
        unet.input_blocks[0][0].register_forward_pre_hook(lambda module, args: self.rows.append(args[0].shape[0]))

    def frames(self, count: int) -> dict:
        pixels = torch.cat([guidance_pixels(self.size, seed=i) for i in range(count)])
        return run_node("VAEEncode", pixels=pixels, vae=self.vae)[0]

    def translate(self, latent: dict, **bank_inputs) -> torch.Tensor:
        inversion = run_node("PnP_DDIMInversion", model=self.model, latent=latent, conditioning=self.empty,
                             steps=self.steps)[0]
        bank = run_node("PnP_FeatureBank", model=self.model, inversion=inversion, conditioning=self.empty,
                        **bank_inputs)[0]
        return run_node("PnP_Sampler", model=self.model, positive=self.positive, negative=self.negative,
                        features=bank)[0]["samples"]

    def measure(self, frames: int, run: str, job) -> Result:
        self.rows.clear()
        self.held.reset()
        before = self.monitor.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        job()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return Result(frames, run, wall, cpu, sum(self.rows), self.held.peak, self.monitor.peak - before)

    def all_runs(self, frames: int) -> list[Result]:
        latent = self.frames(frames)
        results = [self.measure(frames, SINGLE, lambda: [self.translate({"samples": latent["samples"][i:i + 1]})
                                                         for i in range(frames)])]
        for run, bank_inputs in RUNS.items():
            results.append(self.measure(frames, run, lambda inputs=bank_inputs: self.translate(latent, **inputs)))
        return results


def report(results: list[Result], command: str, steps: int, size: int, host_version: str, seconds: float) -> str:
    lines = [
        "# Benchmark: batches of guidance images", "",
        f"Written by `{command}` on {datetime.date.today().isoformat()} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs shared, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, torch {torch.__version__}, "
        f"ComfyUI {host_version}; {seconds / 60:.1f} min). Reduced random SD1.5 UNet, {size} px frames (latent "
        f"{size // LATENT_TO_PIXELS}x{size // LATENT_TO_PIXELS}), {steps} steps, the defaults (tau_f 0.8, tau_A 0.5, "
        f"fp16 bank, batch_size auto, cfg 7.5); each run is a whole translation (inversion, bank, sampler), once "
        f"(no repeats: the times carry "
        f"the machine's load). \"held\" is the peak of the feature bytes the pack holds at once (live stored "
        f"banks, counted exactly); \"RSS\" the peak process RSS above the RSS before the run (sampled every 5 ms; "
        f"the allocator keeps freed memory, so it mostly shows growth).", "",
        "| frames | run | wall s | CPU s | CPU / single runs | UNet rows | held MB | RSS above start MB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    single_cpu = {r.frames: r.cpu for r in results if r.run == SINGLE}
    for r in results:
        lines.append(f"| {r.frames} | {r.run} | {r.wall:.1f} | {r.cpu:.1f} | {r.cpu / single_cpu[r.frames]:.2f} | "
                     f"{r.rows} | {r.held_peak / MB:.2f} | {r.rss_above / MB:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "BATCHES.md")
    args = parser.parse_args()
    command = bench_env.command_line(__file__)
    host = comfy_host.boot(Path(tempfile.mkdtemp(prefix="pnp-bench-")), bench_env.checkpoint_dir())
    import comfyui_version  # ComfyUI's own version file

    monitor = RSSMonitor().start()
    started = time.time()
    bench = Bench(host, args.size, args.steps, monitor)
    bench.translate(bench.frames(1))  # warm-up: model load, first-call allocations
    results = []
    with torch.inference_mode():
        for frames in args.frames:
            results += bench.all_runs(frames)
            print(f"[{time.time() - started:7.1f} s] {frames} frames done", flush=True)
            # Written after each frame count, so that a run stopped early keeps what it measured.
            text = report(results, command, args.steps, args.size, comfyui_version.__version__,
                          time.time() - started)
            args.out.write_text(text)
    monitor.stop()
    print(text)


if __name__ == "__main__":
    main()
