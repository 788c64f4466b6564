"""One process of a multi-process PPO run, started by ``accelerate launch`` from tests/test_processes.py.

``python ppo_process.py OUT [--lora-rank R] [--advantage A]`` builds the tiny byte-level task, runs one PPO
iteration step by step (rollout, make_batch, update) and writes, per process ``k``:
``initial.safetensors`` (process 0: the policy as DDP started it), ``episodes{k}.safetensors`` and
``episodes{k}.json`` (this process's share of the batch), ``weights{k}.safetensors`` (the policy
after the update) and ``state{k}.json`` (the reward pipeline's statistics, the KL controller,
the logged statistics). The test compares processes with each other and with one process
given the same episodes.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

import safetensors.torch
import torch

import textenv  # noqa: F401  (registers the env)
from textenv.agents import PPO
from textenv.envs.task import TextTask
from textenv.models import TINY_MODEL

PROMPTS = ["hello", "the movie was", "a", "great", "I think", "so"]
REWARD = "lowercase_share(normalize=true) + 0.5*length(target=3)"


@textenv.reward(name="lowercase_share")
def lowercase_share(completions: list[str]) -> list[float]:
    """A reward that differs between the tiny model's completions: their share of lowercase letters."""
    return [sum(ch in string.ascii_lowercase for ch in text) / max(len(text), 1) for text in completions]
OPTIONS = dict(batch_size=8, mini_batch_size=8, gradient_accumulation_steps=2, ppo_epochs=2, learning_rate=1e-3,
               reward_norm=True, precision="fp32", device="cpu", progress=False, keep_cpu_memory=False, seed=3)


def advantage_options(advantage: str) -> dict:
    """The options of an advantage estimator: a critic-free one samples groups of 2."""
    return {"advantage": advantage, **({"group_size": 2} if advantage != "gae" else {})}


def task() -> TextTask:
    """The tiny task both sides of the comparison use."""
    return TextTask.build(model=TINY_MODEL, prompts=PROMPTS, reward=REWARD, max_new_tokens=6)


def policy_tensors(agent: PPO) -> dict[str, torch.Tensor]:
    """The policy's parameters (a tied weight once), detached copies."""
    seen, out = set(), {}
    for name, tensor in agent.policy.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            out[name] = tensor.detach().clone().contiguous()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--advantage", default="gae", help="gae, or rloo/grpo (in groups of 2)")
    args = parser.parse_args()
    agent = PPO(task(), lora_rank=args.lora_rank, **OPTIONS, **advantage_options(args.advantage))
    k = agent.processes.index
    if k == 0:
        safetensors.torch.save_file(policy_tensors(agent), args.out / "initial.safetensors")

    episodes = agent.rollout()
    tensors = {name: getattr(episodes, name).contiguous() for name in
               ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "token_rewards")}
    tensors["rewards"] = torch.as_tensor(episodes.rewards)
    safetensors.torch.save_file(tensors, args.out / f"episodes{k}.safetensors")
    (args.out / f"episodes{k}.json").write_text(json.dumps({
        "prompts": episodes.prompts, "completions": episodes.completions,
        "reward_terms": {name: values.tolist() for name, values in episodes.reward_terms.items()},
    }))

    batch, stats = agent.make_batch(episodes)
    stats.update(agent.update(batch))
    safetensors.torch.save_file(policy_tensors(agent), args.out / f"weights{k}.safetensors")
    (args.out / f"state{k}.json").write_text(json.dumps({
        "processes": agent.processes.num, "rewards": agent.task.rewards.state_dict(),
        "kl_coef": float(agent.kl_ctl.value), "score_stats": [float(agent.score_stats.mean),
                                                              float(agent.score_stats.var)],
        "stats": {key: value for key, value in stats.items() if not key.startswith("perf/")},
    }))


if __name__ == "__main__":
    main()
