"""FLUX.1 figures: model calls (NFE) per translation against the official counts, CPU time against a plain FLUX
sampling run, bank bytes (stored, and the peak on the fly) against the formula. Writes bench/FLUX.md and the FLUX
section of bench/RESULTS.md.

From the repository root, on ComfyUI 0.33.0 or newer (the FLUX path needs it; COMFYUI_PATH must point at it):

    COMFYUI_PATH=/root/comfy/ComfyUI-0.33.0 OMP_NUM_THREADS=1 .venvs/comfyui-0.33.0/bin/python bench/flux.py \\
        [--sizes 256 512] [--solvers rf-solver fireflow euler] [--steps N] [--inject K] [--repeats 3]

The tiny random FLUX.1 dev of ``tests/flux_checkpoints.py`` (hidden 128, 2 double + 38 single blocks), a random
latent per image size (``--sizes``, pixels: a 256 px image is a 32x32 latent, 256 image tokens), random
T5/CLIP-L-shaped conditioning (8 text tokens). Each solver runs its official recipe (rf-solver: RF-Solver-Edit's
scripts, 25 steps, inject 3, single blocks 20-37; fireflow: FireFlow's fast editing, 8 steps, inject 1, blocks 0-37;
euler: 25 steps, inject 3, blocks 20-37) unless ``--steps`` / ``--inject`` say otherwise. Per repeat, one after the
other:

- plain: the same solver over the same schedule from the same noise, nothing recorded or injected
  (``flux_sampling.sample(..., inject=False)``): the run PnP is compared with; and ComfyUI's own KSampler (euler,
  simple, cfg 1, same steps: one model call a step) for scale;
- PnP translations, each inversion + bank + PnP sampling: V recorded in the inversion pass (``invert(inject=k)``,
  the official single pass); the bank stored after the inversion (``record_bank``, as PnP Feature Bank does); the
  bank on the fly (``live_bank``: nothing stored, V recomputed per injected evaluation while sampling).

NFE is counted by a forward pre-hook on the transformer; CPU is this process's CPU seconds (steadier than the wall
clock while other processes share the cores), ratios are the median over the repeats of each repeat's ratio to its
own plain run. Bytes: a stored bank's ``nbytes`` against ``families.flux.bank_bytes``; on the fly, the largest V
held at once (measured at each source call) against one evaluation's formula. Not a test: nothing is asserted.
"""
from __future__ import annotations

import bench_env  # first: the environment before torch, the test support modules on sys.path

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = bench_env.ROOT
MIN_COMFYUI = (0, 33, 0)
# solver -> (title, steps, inject, blocks) of the official example the bench runs by default.
RECIPES = {
    "rf-solver": ("RF-Solver-Edit (scripts)", 25, 3, "20-37"),
    "fireflow": ("FireFlow fast editing", 8, 1, "0-37"),
    "euler": ("Euler (reflow)", 25, 3, "20-37"),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# FLUX.1-dev at 1024 px: 4,096 image + 512 text tokens, hidden 3,072; bf16 (the official codes' dtype).
REAL_TOKENS, REAL_HIDDEN, REAL_BYTES = 4096 + 512, 3072, 2
OFFICIAL_DEFAULT_INJECT = 20  # RF-Solver-Edit's command-line default
PHASES = ("KSampler euler", "plain", "in the inversion pass", "stored", "on the fly")
GUIDANCE = 2.0


def _comfyui_at_least_0_33() -> Path:
    """The ComfyUI the bench runs on; exits with what to set when it is missing or older than 0.33.0."""
    from find_comfyui import comfyui_version, find_comfyui, version_tuple

    try:
        path = find_comfyui()
    except FileNotFoundError as exc:
        raise SystemExit(f"bench/flux.py: {exc}") from exc
    version = comfyui_version(path)
    if version_tuple(version) < MIN_COMFYUI:
        raise SystemExit(
            f"bench/flux.py needs ComfyUI 0.33.0 or newer (its FLUX blocks call attn1_patch); COMFYUI_PATH points at "
            f"{path}, ComfyUI {version}. Set COMFYUI_PATH to a ComfyUI >= 0.33.0 (here: /root/comfy/ComfyUI-0.33.0) "
            f"and run its venv's Python (.venvs/comfyui-0.33.0/bin/python).")
    return path


class Calls:
    """Forward calls of a module while active."""

    def __init__(self, module):
        self.module, self.count = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self._seen)
        return self

    def _seen(self, *_):
        self.count += 1

    def __exit__(self, *exc):
        self.handle.remove()


@contextmanager
def held_v(flux_sampling, seen: list[int]):
    """Appends to ``seen`` the bytes of V each on-the-fly source call hands the injection (one evaluation's, held
    until that evaluation ends), by wrapping ``_LiveSource._source_values`` for the duration."""
    live_source = flux_sampling._LiveSource
    original = live_source._source_values

    def measured(self, *args, **kwargs):
        values = original(self, *args, **kwargs)
        seen.append(sum(v.numel() * v.element_size() for v in values.values()))
        return values

    live_source._source_values = measured
    try:
        yield
    finally:
        live_source._source_values = original


@dataclass
class Phase:
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    nfe: int = 0


@dataclass
class Run:
    size: int
    solver: str
    steps: int
    inject: int
    blocks: str
    phases: dict[str, Phase] = field(default_factory=lambda: {name: Phase() for name in PHASES})
    stored_nbytes: int = 0
    stored_formula: int = 0
    live_peak: int = 0
    live_formula: int = 0
    n_blocks: int = 0

    def ratio(self, phase: str) -> float:
        plain = self.phases["plain"].cpu
        return statistics.median(c / p for c, p in zip(self.phases[phase].cpu, plain))


class FluxBench:
    def __init__(self, host, dtype: torch.dtype):
        from harness import run_node

        import flux_checkpoints as fc

        self.run_node, self.dtype = run_node, dtype
        import folder_paths

        folder = host.checkpoint_dir.parent / "diffusion_models"
        folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
        name = fc.ensure_model("flux_dev_tiny", folder)
        (self.model,) = run_node("UNETLoader", unet_name=name, weight_dtype="default")
        self.net = self.model.model.diffusion_model
        self.flux_sampling = importlib.import_module(f"{host.pack_module_name}.pnp_hooks.flux_sampling")
        self.flux_family = importlib.import_module(f"{host.pack_module_name}.pnp_hooks.families.flux")
        self.solvers = importlib.import_module(f"{host.pack_module_name}.pnp_hooks.flow_solvers")
        tokens, pooled = fc.random_conditioning("source")
        self.source = [[tokens, {"pooled_output": pooled}]]
        tokens, pooled = fc.random_conditioning("target")
        (self.target,) = run_node("FluxGuidance", conditioning=[[tokens, {"pooled_output": pooled}]],
                                  guidance=GUIDANCE)

    def timed(self, phase: Phase, fn):
        """Runs ``fn`` counting model calls; keeps CPU and wall seconds and the count (the same every repeat)."""
        cpu, wall = time.process_time(), time.perf_counter()
        with Calls(self.net) as calls:
            out = fn()
        phase.cpu.append(time.process_time() - cpu)
        phase.wall.append(time.perf_counter() - wall)
        phase.nfe = calls.count
        return out

    def measure(self, run: Run, repeats: int) -> None:
        fs = self.flux_sampling
        latent_hw = run.size // 8
        latent = {"samples": torch.randn(1, 16, latent_hw, latent_hw, generator=torch.Generator().manual_seed(0))}
        samples = latent["samples"]
        steps, inject, blocks, dtype = run.steps, run.inject, run.blocks, self.dtype
        with torch.inference_mode():
            noise = fs.invert(self.model, samples, self.source, steps, solver=run.solver)  # also warms the model up

            def ksampler():
                return self.run_node("KSampler", model=self.model, seed=0, steps=steps, cfg=1.0, sampler_name="euler",
                                     scheduler="simple", positive=self.target, negative=self.source,
                                     latent_image=latent, denoise=1.0)

            def plain():
                return fs.sample(self.model, noise, self.target, guidance=None, inject=False)

            def in_pass():
                bank = fs.invert(self.model, samples, self.source, steps, solver=run.solver, blocks=blocks,
                                 inject=inject, storage_dtype=dtype)
                return fs.sample(self.model, bank, self.target, guidance=None), bank

            def stored():
                inverted = fs.invert(self.model, samples, self.source, steps, solver=run.solver)
                bank = fs.record_bank(self.model, inverted.inversion, self.source, blocks=blocks, inject=inject,
                                      storage_dtype=dtype)
                return fs.sample(self.model, bank, self.target, guidance=None), bank

            def live():
                inverted = fs.invert(self.model, samples, self.source, steps, solver=run.solver)
                bank = fs.live_bank(self.model, inverted.inversion, self.source, blocks=blocks, inject=inject,
                                    storage_dtype=dtype)
                return fs.sample(self.model, bank, self.target, guidance=None), bank

            for _ in range(repeats):
                self.timed(run.phases["KSampler euler"], ksampler)
                self.timed(run.phases["plain"], plain)
                self.timed(run.phases["in the inversion pass"], in_pass)
                (out_stored, _), stored_bank = self.timed(run.phases["stored"], stored)
                seen: list[int] = []
                with held_v(fs, seen):
                    (out_live, _), live_bank = self.timed(run.phases["on the fly"], live)
                if not torch.equal(out_stored["samples"], out_live["samples"]):
                    raise RuntimeError(f"{run.solver} {run.size} px: the on-the-fly translation differs from the "
                                       f"stored bank's; the figures would compare different things.")
        evaluations = self.solvers.EVALUATIONS_PER_STEP[run.solver]
        element = torch.empty((), dtype=dtype).element_size()
        tokens = self.source[0][0].shape[1] + self.flux_family.image_tokens((latent_hw, latent_hw))
        run.n_blocks = len(stored_bank.blocks)
        run.stored_nbytes = stored_bank.nbytes
        run.stored_formula = self.flux_family.bank_bytes(tokens, self.net.hidden_size, run.n_blocks, evaluations,
                                                         inject, element)
        run.live_peak = max(seen, default=0)
        run.live_formula = self.flux_family.bank_bytes(tokens, self.net.hidden_size, run.n_blocks, 1, 1, element)
        assert live_bank.peak_nbytes == run.live_formula


def official_nfe(solvers, solver: str, steps: int) -> int:
    """NFE of one official translation: inversion and denoising, one pass each (docs/flux-plan.md)."""
    return 2 * solvers.model_calls(solver, steps)


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def render(runs: list[Run], solvers, flux_family, command: str, comfy_version: str, dtype_name: str,
           repeats: int, elapsed: float) -> tuple[str, str]:
    """(bench/FLUX.md, the FLUX section of bench/RESULTS.md)."""
    head = [
        "Produced by (from the repository root):", "", "```bash", command, "```", "",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; run time {elapsed / 60:.1f} min",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other "
        f"users' test runs), torch {torch.__version__} with {torch.get_num_threads()} thread(s), ComfyUI "
        f"{comfy_version} in CPU mode",
        f"- model: the tiny random FLUX.1 dev of tests/flux_checkpoints.py (hidden 128, 2 double + 38 single "
        f"blocks, fp32), 8 text tokens, guidance {GUIDANCE}; V stored in {dtype_name}; {repeats} repeats",
        "",
    ]
    nfe = [
        "### Model calls (NFE) per translation, counted", "",
        "Inversion + bank + PnP sampling. The official count is one inversion pass and one denoising pass "
        "(docs/flux-plan.md: RF-Solver-Edit 25 steps 100, FireFlow 8 steps 18). Stored after the inversion and on "
        "the fly both add one model call per injected evaluation (rf-solver 2 a step, fireflow and euler 1); on the "
        "fly they run while sampling.", "",
        "| image | recipe | steps | inject | blocks | official | in the inversion pass | stored (record_bank) | "
        "on the fly | plain run (same solver) | KSampler euler |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cpu = [
        "### CPU time against a plain FLUX sampling run", "",
        "Process CPU seconds (min over the repeats) and, per PnP translation, the median over the repeats of its "
        "ratio to the plain run of the same repeat: the same solver over the same schedule, nothing recorded or "
        "injected. ComfyUI's KSampler (euler, one model call a step) for scale.", "",
        "| image | recipe | plain s | KSampler euler s | in the inversion pass s (x plain) | stored s (x plain) | "
        "on the fly s (x plain) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    memory = [
        "### Bank bytes against the formula", "",
        "`bytes = (text + image tokens) x hidden x blocks x evaluations a step x injected steps x bytes an element` "
        "(evaluations: rf-solver 2, fireflow and euler 1: FireFlow's midpoints only). Stored: the bank's `nbytes`; "
        "on the fly: the most V held at once while sampling, measured at each source call, against the formula for "
        "one evaluation. The last three columns: the same formula for FLUX.1-dev at 1024 px (4,608 tokens, hidden "
        "3,072) in bf16; the official codes keep the same bytes as the stored bank for the same run, and "
        f"RF-Solver-Edit's command-line default injects {OFFICIAL_DEFAULT_INJECT} steps.", "",
        "| image | recipe | stored B | formula B | on the fly, peak B | formula (one evaluation) B | 1024 px: stored = "
        "official | official default | on the fly |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        title = f"{RECIPES[run.solver][0]}"
        size = f"{run.size} px"
        p = run.phases
        nfe.append(f"| {size} | {title} | {run.steps} | {run.inject} | {run.blocks} | "
                   f"{official_nfe(solvers, run.solver, run.steps)} | {p['in the inversion pass'].nfe} | "
                   f"{p['stored'].nfe} | {p['on the fly'].nfe} | {p['plain'].nfe} | {p['KSampler euler'].nfe} |")
        cells = [f"{min(p[name].cpu):.2f} ({run.ratio(name):.2f}x)" for name in
                 ("in the inversion pass", "stored", "on the fly")]
        cpu.append(f"| {size} | {title} | {min(p['plain'].cpu):.2f} | {min(p['KSampler euler'].cpu):.2f} | "
                   f"{' | '.join(cells)} |")
        evaluations = solvers.EVALUATIONS_PER_STEP[run.solver]
        real_eval = flux_family.bank_bytes(REAL_TOKENS, REAL_HIDDEN, run.n_blocks, 1, 1, REAL_BYTES)
        real_stored = flux_family.bank_bytes(REAL_TOKENS, REAL_HIDDEN, run.n_blocks, evaluations, run.inject,
                                             REAL_BYTES)
        real_default = flux_family.bank_bytes(REAL_TOKENS, REAL_HIDDEN, run.n_blocks, evaluations,
                                              OFFICIAL_DEFAULT_INJECT, REAL_BYTES)
        default = _gb(real_default) if run.solver == "rf-solver" else "-"
        memory.append(f"| {size} | {title} | {run.stored_nbytes:,} | {run.stored_formula:,} | {run.live_peak:,} | "
                      f"{run.live_formula:,} | {_gb(real_stored)} | {default} | {_gb(real_eval)} |")
    body = nfe + [""] + cpu + [""] + memory + [
        "",
        "Every on-the-fly translation above equals the stored bank's bit for bit (checked in each repeat; "
        "`tests/host/test_flux_live.py` asserts it). Times are CPU seconds of one thread while other processes "
        "share the cores: compare ratios, not absolute seconds, and only between runs of this script.",
    ]
    flux_md = "\n".join(["# FLUX.1 benchmark (bench/flux.py)", ""] + head + body) + "\n"
    section = "\n".join(["## FLUX.1 (bench/flux.py)", ""] + head + body) + "\n"
    return flux_md, section


def replace_section(text: str, section: str) -> str:
    """``text`` with its "## FLUX.1" section (up to the next "## " heading) replaced by ``section``, or with
    ``section`` appended."""
    match = re.search(r"^## FLUX\.1.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if match is None:
        return text.rstrip("\n") + "\n\n" + section
    return text[:match.start()] + section + ("\n" if match.end() < len(text) else "") + text[match.end():]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256],
                        help="square image sizes in pixels, multiples of 16 (latent = size / 8)")
    parser.add_argument("--solvers", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--steps", type=int, default=0, help="steps for every solver (0: each official recipe's)")
    parser.add_argument("--inject", type=int, default=-1, help="injected steps (-1: each official recipe's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="V's storage dtype")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "FLUX.md")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md",
                        help="the report whose FLUX section is replaced")
    args = parser.parse_args()
    if any(size < 16 or size % 16 for size in args.sizes):
        parser.error(f"--sizes must be multiples of 16 pixels, got {args.sizes}")
    _comfyui_at_least_0_33()
    import comfy_host

    command = bench_env.command_line(__file__)
    started = time.time()
    host = comfy_host.boot(Path(tempfile.mkdtemp(prefix="pnp-flux-bench-")), bench_env.checkpoint_dir())
    import comfyui_version  # ComfyUI's own version file

    bench = FluxBench(host, DTYPES[args.dtype])
    runs = []
    for size in args.sizes:
        for solver in args.solvers:
            _, steps, inject, blocks = RECIPES[solver]
            steps = args.steps or steps
            inject = inject if args.inject < 0 else args.inject
            run = Run(size, solver, steps, min(inject, steps), blocks)
            bench.measure(run, args.repeats)
            runs.append(run)
            print(f"[{time.time() - started:7.1f} s] {size} px {solver}: done", flush=True)
    flux_md, section = render(runs, bench.solvers, bench.flux_family, command, comfyui_version.__version__,
                              args.dtype, args.repeats, time.time() - started)
    args.out.write_text(flux_md, encoding="utf-8")
    if args.results:
        results = args.results.read_text(encoding="utf-8") if args.results.exists() else ""
        args.results.write_text(replace_section(results, section), encoding="utf-8")
    print(flux_md)


if __name__ == "__main__":
    sys.exit(main())
