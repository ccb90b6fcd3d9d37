"""The real server (main.py) under a queue: translations back to back, and Cancel in each PnP node.

The server runs with ``--cache-none`` (a mode ComfyUI users run), so every
queued prompt recomputes every node: flat memory over the queue means the
pack keeps nothing of a run, and an interrupted node followed by a full run
must give exactly the uninterrupted result.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import browser
import server_client
from harness import guidance_pixels, translation_prompt

STEPS = 12
QUEUED = 10


@pytest.fixture(scope="module")
def server(host, models, tmp_path_factory):
    from PIL import Image

    inputs = tmp_path_factory.mktemp("queue-inputs")
    pixels = (guidance_pixels(64)[0].numpy() * 255).round().astype("uint8")
    Image.fromarray(pixels).save(inputs / "queue_guidance.png")
    ckpt = models.checkpoint("sd15_reduced")
    srv = browser.ComfyServer(tmp_path_factory.mktemp("queue-server"),
                              {"checkpoints": {ckpt: host.checkpoint_dir / ckpt}},
                              {"queue_guidance.png": inputs / "queue_guidance.png"}, extra_args=("--cache-none",))
    with srv:
        yield srv


@pytest.fixture(scope="module")
def translation(models):
    return translation_prompt(models.checkpoint("sd15_reduced"), "queue_guidance.png", steps=STEPS,
                              output="SaveLatent", bank={"batch_size": 0})


def _saved_latent(server, run: server_client.Run, node_id: str) -> torch.Tensor:
    saved = server_client.history(server, run.prompt_id)["outputs"][node_id]["latents"][0]
    return load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def test_queued_translations_keep_memory_flat_and_give_identical_results(server, translation):
    prompt, refs = translation
    peaks, latents = [], []
    for _ in range(QUEUED):
        server_client.reset_peak_rss(server.proc.pid)
        run = server_client.run(server, prompt.api)
        assert run.end == "execution_success", server.log_tail()
        peaks.append(server_client.peak_rss_mib(server.proc.pid))
        latents.append(_saved_latent(server, run, refs["output"].node_id))
    print("\nserver peak RSS of each translation (MiB): " + ", ".join(f"{r:.1f}" for r in peaks))
    assert all(torch.equal(latent, latents[0]) for latent in latents)
    # The peak of each run (the checkpoint loaded, --cache-none reloads it per prompt): sampled after a run, RSS
    # is bimodal (the checkpoint still loaded or already collected by ComfyUI's 10 s gc timer); the peak is not.
    # After two warm-up runs no peak is 32 MiB above the third, and the last four average no more than 16 MiB above
    # runs 3-6: no run keeps a run's worth of memory, and a slow leak (4 MiB a run) would show; a peak lower than
    # the others (seen: -38 MiB on a later run) is no leak. What the pack keeps of a run is checked object by
    # object in test_hostile_input.py::test_nothing_of_a_run_stays_alive.
    early, late = sum(peaks[2:6]) / 4, sum(peaks[-4:]) / 4
    assert max(peaks[2:]) - peaks[2] < 32.0 and late - early < 16.0, peaks


@pytest.mark.parametrize("node", ["inversion", "bank", "sampler"])
def test_cancel_in_each_pnp_node_then_the_next_run_equals_an_uninterrupted_one(server, translation, node):
    prompt, refs = translation
    reference = server_client.run(server, prompt.api)
    assert reference.end == "execution_success", server.log_tail()
    expected = _saved_latent(server, reference, refs["output"].node_id)

    cancelled = server_client.run(server, prompt.api, cancel_at=(refs[node].node_id, 1))
    assert cancelled.end == "execution_interrupted", cancelled
    assert refs["output"].node_id not in cancelled.executed
    print(f"\nCancel in {node}: interrupted {cancelled.cancel_latency_s:.2f} s after /interrupt")

    again = server_client.run(server, prompt.api)
    assert again.end == "execution_success", server.log_tail()
    assert torch.equal(_saved_latent(server, again, refs["output"].node_id), expected)
