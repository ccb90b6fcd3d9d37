"""Robustness figures of issue 11: parse time of the worst strings, Cancel latency of PnP Feature Bank, server
memory over a queue of translations.

    .venvs/comfyui-<version>/bin/python bench/robustness.py [--out bench/ROBUSTNESS.md]

Parse times are the pack's own parser (pure Python). The rest runs the real ComfyUI server (main.py, CPU,
``--cache-none`` so every prompt recomputes) with this pack and the reduced random SD1.5 checkpoint, driven as
the frontend drives it (HTTP + websocket, tests/server_client.py): Cancel is posted as soon as PnP Feature
Bank reports its first recorded timestep, and the latency is the time until the server reports the prompt
interrupted. Nothing here is a test; the figures are recorded in the report with the command.
"""
from __future__ import annotations

import os
import sys

import bench_env  # first: the environment before torch, the test support modules on sys.path

import argparse  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = bench_env.ROOT

import psutil  # noqa: E402

import browser  # noqa: E402
import checkpoints  # noqa: E402
import comfy_host  # noqa: E402
import server_client  # noqa: E402
from harness import translation_prompt  # noqa: E402
from pure import pure  # noqa: E402

WORST = {
    "0-99999999": "0-99999999",
    "'1-' + 9998 digits": "1-" + "9" * 9998,
    "10,000 characters of 'x'": "x" * 10000,
    "'4,' x 5000 (valid, one site)": "4," * 5000,
    "'4-11,' x 4000 (valid, 8 sites)": "4-11," * 4000,
    "4-11:0-9999": "4-11:0-9999",
}


def parse_times() -> list[tuple[str, float, str]]:
    layers, errors, unet = pure("layers"), pure("errors"), pure("families.unet")
    layout = unet.UNetLayout((True,) * 12, (0, 0, 0) + (1,) * 9, (1280,) * 6 + (640,) * 3 + (320,) * 3,
                             (0, 0, 0) + (1280,) * 3 + (640,) * 3 + (320,) * 3, (3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0))
    rows = []
    for label, spec in WORST.items():
        best, outcome = float("inf"), ""
        for _ in range(5):
            started = time.perf_counter()
            try:
                sites = layers.resolve_sites({"resblock": "4", "attention": spec}, layout, unet.KINDS)
                outcome = f"accepted: {len(sites['attention'])} site(s)"
            except errors.PnPInputError as exc:
                outcome = f"refused ({len(str(exc))} characters)"
            best = min(best, time.perf_counter() - started)
        rows.append((label, best, outcome))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "ROBUSTNESS.md")
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--queue", type=int, default=12)
    args = parser.parse_args()
    command = " ".join(shlex.quote(a) for a in ["python", "bench/robustness.py", *sys.argv[1:]])

    parsed = parse_times()
    work = Path(tempfile.mkdtemp(prefix="pnp-robustness-"))
    host = comfy_host.boot(work / "host", ROOT / "bench" / ".cache" / "checkpoints")
    import comfyui_version

    ckpt = checkpoints.ensure_checkpoint("sd15_reduced", host.checkpoint_dir)
    server = browser.ComfyServer(work / "server", {"checkpoints": {ckpt: host.checkpoint_dir / ckpt}}, {},
                                 extra_args=("--cache-none",))
    cancels, rss = {}, []
    with server:
        for size in map(int, args.sizes.split(",")):
            prompt, refs = translation_prompt(ckpt, steps=args.steps, output="SaveLatent", size=size)
            latencies, unet_calls = [], []
            for _ in range(3):
                run = server_client.run(server, prompt.api, cancel_at=(refs["bank"].node_id, 1))
                latencies.append(run.cancel_latency_s)
                steps = run.progress_times[refs["inversion"].node_id]
                unet_calls.append(statistics.median(b - a for a, b in zip(steps, steps[1:])))
            cancels[size] = latencies, statistics.median(unet_calls)
            print(f"{size} px: Cancel latencies {latencies}, one inversion step {cancels[size][1]:.3f} s", flush=True)
        prompt, _ = translation_prompt(ckpt, steps=args.steps, output="SaveLatent")
        process = psutil.Process(server.proc.pid)
        for i in range(args.queue):
            assert server_client.run(server, prompt.api).end == "execution_success", server.log_tail()
            rss.append(process.memory_info().rss / 2 ** 20)
            print(f"queue {i + 1}/{args.queue}: RSS {rss[-1]:.1f} MiB", flush=True)

    lines = [
        "# Robustness figures (issue 11)", "",
        f"Command: `{command}` — ComfyUI {comfyui_version.__version__}, torch {__import__('torch').__version__}, "
        f"CPU ({os.cpu_count()} cores, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}), reduced random SD1.5.", "",
        "## Parse time of the worst layer strings (best of 5)", "",
        "| typed in attention_layers | time | outcome |", "| --- | ---: | --- |",
        *[f"| {label} | {seconds * 1000:.2f} ms | {outcome} |" for label, seconds, outcome in parsed], "",
        f"## Cancel latency of PnP Feature Bank ({args.steps} steps, batch_size 0 = auto)", "",
        "From /interrupt, posted when the bank reports its first recorded timestep, to the server's "
        "`execution_interrupted` (3 runs each, median and worst), beside the median time of one PnP DDIM "
        "Inversion step of the same runs (one single-timestep UNet call, one row) under the same load:", "",
        "| image | median | worst | one single-timestep UNet call | worst / one call |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *[f"| {size} px | {statistics.median(v):.2f} s | {max(v):.2f} s | {call:.2f} s | {max(v) / call:.1f} |"
          for size, (v, call) in cancels.items()], "",
        f"## Server RSS over {args.queue} translations queued back to back (64 px, `--cache-none`)", "",
        ", ".join(f"{r:.1f}" for r in rss) + " MiB", "",
        f"Growth after the first two runs: {max(rss[2:]) - rss[2]:.1f} MiB (max), last minus third: "
        f"{rss[-1] - rss[2]:.1f} MiB.", "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
