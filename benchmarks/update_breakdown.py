"""Where one PPO update's time goes, on the throughput workload (benchmarks/ppo_throughput.py).

SmolLM2-135M, 16 movie-review prompts x 32 tokens, mini-batch 8, bf16 autocast where the
CPU has it. Prints medians in milliseconds of:

* one forward+backward of a micro-batch (``PPO._backward``), repeated on one micro-batch;
* its parts: the trunk alone, the tied ``lm_head`` alone, the log-softmax and gather alone,
  and the trunk with the input embedding untied and frozen (what its gradient costs);
* the optimizer step's parts: the gradient-norm clip and fused Adam;
* each micro-batch's forward+backward inside real updates (``train_iteration``), after one
  warm-up iteration.

Run::

    .venv/bin/python benchmarks/update_breakdown.py

(``--model tiny-random``: the same figures of the tiny model in seconds, the test suite's smoke run.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import torch

import textenv  # noqa: F401  (registers the env)
from textenv.agents import PPO
from textenv.agents.ppo_math import logprobs_and_entropy, without_left_padding
from textenv.generation import position_ids


def median_ms(agent: PPO, work: Callable[[], None], repeats: int = 7) -> float:
    """Median wall time of ``work`` after one warm-up call, gradients cleared before each."""
    work()
    times = []
    for _ in range(repeats):
        agent.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    env = gym.make("textenv/TextGen-v0", model=args.model, prompts="movie-reviews", reward="sentiment",
                   max_new_tokens=32, eos_token_ids=[])
    agent = PPO(env, progress=False, seed=0, batch_size=16, mini_batch_size=8, ppo_epochs=4)
    batch, _ = agent.make_batch(agent.rollout())
    agent.policy.train()
    mb = batch.rows(torch.arange(8))
    ids, att = without_left_padding(mb.input_ids, mb.attention_mask)  # (8, L')
    positions = position_ids(att)  # (8, L')
    lm = agent.policy.lm
    dtype = torch.bfloat16 if agent.bf16 else torch.float32
    autocast = torch.autocast(agent.device.type, dtype=torch.bfloat16, enabled=agent.bf16)
    print(f"micro-batch {tuple(ids.shape)}, {'bf16 autocast' if agent.bf16 else 'fp32'}, "
          f"{torch.get_num_threads()} threads")

    def trunk() -> None:
        with autocast:
            hidden = lm.model(input_ids=ids, attention_mask=att, position_ids=positions, use_cache=False)
        hidden.last_hidden_state.float().pow(2).mean().backward()  # (8, L', H)

    hidden = torch.randn(8, 32, lm.config.hidden_size, dtype=dtype, requires_grad=True)  # (8, T, H)

    def head() -> None:
        with autocast:
            logits = lm.lm_head(hidden)  # (8, T, V)
        logits.float().sum().backward()

    logits = torch.randn(8, 32, agent.task.vocab_size, dtype=dtype, requires_grad=True)  # (8, T, V)

    def log_softmax() -> None:
        logprobs, _ = logprobs_and_entropy(logits, mb.tokens, with_entropy=False)  # (8, T)
        logprobs.sum().backward()

    params = [p for p in agent.policy.parameters() if p.requires_grad]

    def clip() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)

    figures = {
        "forward+backward of one micro-batch": median_ms(agent, lambda: agent._backward(mb, with_entropy=False)),
        "  trunk alone": median_ms(agent, trunk),
        "  tied lm_head alone": median_ms(agent, head),
        "  log-softmax and gather alone": median_ms(agent, log_softmax),
    }
    agent.optimizer.zero_grad(set_to_none=True)
    agent._backward(mb, with_entropy=False)  # real gradients for the optimizer's figures
    grads = [p.grad.clone() for p in params]

    def optimizer_ms(step: Callable[[], None], repeats: int = 7) -> float:
        """Median time of ``step`` alone, on a fresh copy of those gradients each time (first call a warm-up)."""
        times = []
        for _ in range(repeats + 1):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:]) * 1e3

    figures["gradient-norm clip"] = optimizer_ms(clip)
    figures["fused Adam step"] = optimizer_ms(agent.optimizer.step)

    embedding = lm.model.embed_tokens
    tied = embedding.weight
    embedding.weight = torch.nn.Parameter(tied.detach().clone(), requires_grad=False)
    figures["  trunk, input embedding untied and frozen"] = median_ms(agent, trunk)
    embedding.weight = tied

    inside: list[float] = []
    backward = agent._backward

    def timed_backward(micro_batch, *args, **kwargs):
        start = time.perf_counter()
        stats = backward(micro_batch, *args, **kwargs)
        inside.append(time.perf_counter() - start)
        return stats

    agent._backward = timed_backward
    agent.train_iteration()  # warm-up
    inside.clear()
    for _ in range(3):
        agent.train_iteration()
    figures["forward+backward inside real updates (24 micro-batches)"] = statistics.median(inside) * 1e3
    for label, ms in figures.items():
        print(f"{label:<58}{ms:8.1f} ms")
    print(f"  inside real updates: min {min(inside) * 1e3:.0f} ms, max {max(inside) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
