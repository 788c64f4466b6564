"""The ``textenv`` command line: ``textenv plugins``, ``textenv demo``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from textenv.envs.task import DEFAULT_PROMPTS, DEFAULT_REWARD
from textenv.models import DEFAULT_MODEL

# The main job's reward: the default's sentiment paid out per token (its sum is the same
# score), which the value head credits token by token.
TRAIN_REWARD = "sentiment_dense + repetition"

# Modules that keep their subcommands beside their feature. Each has
# ``add_commands(sub)`` (adds its parsers, each with ``set_defaults(run=...)``) and
# ``USER_ERRORS``, the exception types that main() prints as one clear line.
COMMAND_MODULES: tuple[str, ...] = ("textenv.sft_cli", "textenv.reward_model.cli", "textenv.feedback.cli")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``textenv`` command."""
    parser = argparse.ArgumentParser(prog="textenv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list every registered reward source and prompt set")
    p.set_defaults(run=_plugins)

    p = sub.add_parser("demo", help="generate with a model in the env and show each completion's rewards")
    p.add_argument("--model", default=DEFAULT_MODEL, help="local path, hub id or smollm2-135m (default)")
    p.add_argument("--prompts", default=DEFAULT_PROMPTS, help="prompt set name, .txt or .jsonl file")
    p.add_argument("--reward", default=DEFAULT_REWARD, help="reward spec, e.g. 'sentiment + 0.5*length'")
    p.add_argument("--num-prompts", type=int, default=4, help="episodes generated side by side")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_demo)

    p = sub.add_parser("train", help="train a model with PPO in the env (the main job)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="local path, hub id or smollm2-135m (default)")
    p.add_argument("--prompts", default=DEFAULT_PROMPTS, help="prompt set name, .txt or .jsonl file")
    p.add_argument("--reward", default=TRAIN_REWARD,
                   help=f"reward spec (default: {TRAIN_REWARD!r}, sentiment paid out per token)")
    p.add_argument("--iterations", type=int, default=12, help="PPO iterations (of --batch-size episodes)")
    # Defaults: the best learner on the default task (docs/BENCHMARKS.md, learning curve (bb)).
    p.add_argument("--batch-size", type=int, default=64, help="episodes per iteration")
    p.add_argument("--mini-batch-size", type=int, default=16)
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate at the start")
    p.add_argument("--lr-schedule", choices=["linear", "constant"], default="linear",
                   help="linear (default): anneal the learning rate to 0 over the run's iterations")
    p.add_argument("--kl-coef", type=float, default=0.085, help="initial weight of the per-token KL penalty")
    p.add_argument("--vf-coef", type=float, default=0.5, help="weight of the value loss (gae)")
    p.add_argument("--lam", type=float, default=0.8, help="GAE's lambda (gae)")
    p.add_argument("--clip", type=float, default=0.2, help="PPO's clip range of the policy ratio")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--advantage", choices=["gae", "rloo", "grpo"], default="gae",
                   help="gae (default: the value head, crediting each token), rloo (leave-one-out baseline over "
                        "--group-size samples per prompt) or grpo")
    p.add_argument("--group-size", type=int, default=8, help="samples per prompt for rloo/grpo")
    p.add_argument("--eval-prompts", type=int, default=8, help="prompts scored before and after training")
    p.add_argument("--output-dir", default="runs/textenv",
                   help="TensorBoard events, samples, checkpoints, reward curve")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda ...")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="a checkpoint directory, or a run directory (its latest checkpoint)")
    p.set_defaults(run=_train)

    user_errors: list[type[Exception]] = []
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.add_commands(sub)
        user_errors.extend(module.USER_ERRORS)

    args = parser.parse_args(argv)
    from textenv.plugin_manager import PluginError
    from textenv.prompts import PromptError
    from textenv.rewards import RewardError

    try:
        return args.run(args) or 0
    except (PluginError, PromptError, RewardError, *user_errors) as exc:
        print(f"textenv: error: {exc}", file=sys.stderr)
        return 2


def _plugins(args: argparse.Namespace) -> int:
    from textenv.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    sources = pm.reward_sources()
    width = max(map(len, sources))
    print("reward sources:")
    for name, source in sources.items():
        print(f"  {name:<{width}}  {source.description}\n  {'':<{width}}  from {source.origin}")
    print(f"  {'python:MODULE:FUNCTION':<{width}}  any function of yours, loaded by name")
    print("prompt sets:")
    for name, prompts in sorted(pm.prompt_sets().items()):
        print(f"  {name:<{width}}  {len(prompts)} prompts, e.g. {prompts[0]!r}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import torch

    from textenv.envs.text_gen_vector import TextGenVectorEnv
    from textenv.generation import SamplingConfig, generate_episodes
    from textenv.models import default_device, load_causal_lm

    device = torch.device(args.device) if args.device else default_device()
    print(f"loading {args.model} on {device} ...", flush=True)
    start = time.perf_counter()
    model = load_causal_lm(args.model, device=device)
    env = TextGenVectorEnv(
        args.num_prompts,
        device=device,
        autoreset_mode="Disabled",
        model=args.model,
        prompts=args.prompts,
        reward=args.reward,
        max_new_tokens=args.max_new_tokens,
        chat_template=args.chat_template,
    )
    print(f"loaded in {time.perf_counter() - start:.1f} s; reward = {args.reward}", flush=True)
    start = time.perf_counter()
    episodes = generate_episodes(
        model, env, sampling=SamplingConfig(temperature=args.temperature), seed=args.seed, progress=True
    )
    tokens = int(episodes.completion_mask.sum())
    elapsed = time.perf_counter() - start
    for i, (prompt, completion) in enumerate(zip(episodes.prompts, episodes.completions)):
        terms = "  ".join(f"{k} {v[i]:+.3f}" for k, v in episodes.reward_terms.items())
        print(f"\n[{i}] {prompt}\u27e6{completion}\u27e7\n    reward {episodes.rewards[i]:+.3f}  ({terms})")
    print(f"\n{tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.1f} tokens/s); "
          f"mean reward {episodes.rewards.mean():+.3f}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from textenv.train import run_training

    return run_training(args)


if __name__ == "__main__":
    sys.exit(main())
