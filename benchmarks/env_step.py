"""How fast is TextGenVectorEnv, and what share of a decode step does it cost?

Prints two tables (figures recorded in docs/BENCHMARKS.md):

(a) Null policy: fixed, precomputed actions and no model, for each N in --sizes.
    The default model's tokenizer and reward, ``autoreset_mode="NextStep"``, so
    episodes end (truncated at --max-new-tokens), get decoded and scored, and reset
    inside the timed loop. Every ``env.step`` is timed on its own and classed as a
    *token* step (append only), an *end* step (some episode ended: decode + reward
    pipeline + info) or a *reset* step (NextStep autoreset of the rows that ended).
    With every row in lockstep an episode of T tokens is T + 1 steps: T - 1 token
    steps, 1 end step, 1 reset step.

(b) The env as a share of one decode step of the default model at N = --decode-batch:
    the loop of ``textenv.generation.generate_episodes`` (prefill once, then one-token
    forwards with the KV cache, sample, ``env.step``), with the forward and the
    ``env.step`` timed one after the other at every step of the same run.

Medians over --repeats; the machine is shared and noisy, so compare figures from
one run only. Run: ``.venv/bin/python benchmarks/env_step.py``: about 1 min with
``--threads 1`` even on a busy machine; with 2 threads it took ~7 min while other jobs
held the cores (the 2-thread OpenMP regions wait for the busy second core).
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import os
import platform
import pstats
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from timing import TimedRewards

from textenv.envs.task import DEFAULT_REWARD, TextTask
from textenv.envs.text_gen_vector import TextGenVectorEnv
from textenv.generation import SamplingConfig, position_ids, sample_tokens
from textenv.models import DEFAULT_MODEL, load_causal_lm

# ------------------------------------------------------------------ helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values) -> float:
    return statistics.median(values) if len(values) else float("nan")


def action_pool(task: TextTask) -> torch.Tensor:
    """Token ids of the prompt set, EOS excluded: real English tokens for decode and VADER."""
    pool = torch.unique(task.prompt_ids[task.prompt_mask.bool()])
    return pool[~torch.isin(pool, torch.tensor(task.eos_ids))]


# -------------------------------------------------------- (a) null policy


@dataclass
class NullPolicyResult:
    n: int
    steps_per_s: list[float] = field(default_factory=list)
    token_step_s: list[float] = field(default_factory=list)
    end_step_s: list[float] = field(default_factory=list)
    reset_step_s: list[float] = field(default_factory=list)
    reward_s: list[float] = field(default_factory=list)
    share_token: list[float] = field(default_factory=list)
    share_end: list[float] = field(default_factory=list)
    share_reset: list[float] = field(default_factory=list)
    episodes: int = 0


def bench_null_policy(task: TextTask, n: int, args, device: torch.device) -> NullPolicyResult:
    env = TextGenVectorEnv(n, task=task, device=device, autoreset_mode="NextStep")
    cycle = task.max_new_tokens + 1  # steps per episode in lockstep
    steps = cycle * args.episodes
    pool = action_pool(task)
    gen = torch.Generator().manual_seed(0)
    actions = pool[torch.randint(len(pool), (steps, n), generator=gen)].to(device)  # (S, N)
    timed = task.rewards
    result = NullPolicyResult(n)
    env.reset(seed=0)
    for rep in range(args.repeats + 1):  # the first pass warms up and is dropped
        times, kinds = np.empty(steps), np.empty(steps, dtype="U5")
        reward_times, episodes, prev_ended = [], 0, False
        for s in range(steps):
            before = timed.seconds
            sync(device)
            start = time.perf_counter()
            _, _, terminated, truncated, info = env.step(actions[s])
            sync(device)
            times[s] = time.perf_counter() - start
            ended = bool((terminated | truncated).any())
            kinds[s] = "end" if ended else ("reset" if prev_ended else "token")
            prev_ended = ended
            if ended:
                episodes += int(info["_completion"].sum())
                reward_times.append(timed.seconds - before)
        if rep == 0:
            continue
        total = times.sum()
        ends = kinds == "end"
        result.steps_per_s.append(steps / total)
        result.token_step_s.append(float(np.median(times[kinds == "token"])))
        result.end_step_s.append(float(np.median(times[ends])))
        result.reset_step_s.append(float(np.median(times[kinds == "reset"])))
        result.reward_s.append(median(reward_times))
        result.share_token.append(times[kinds == "token"].sum() / total)
        result.share_end.append(times[ends].sum() / total)
        result.share_reset.append(times[kinds == "reset"].sum() / total)
        result.episodes += episodes
    env.close()
    return result


def print_null_policy(results: list[NullPolicyResult], args) -> None:
    t = args.max_new_tokens
    print(
        f"\n(a) null policy: T={t}, autoreset NextStep, {args.episodes} episodes per row "
        f"per repeat, medians of {args.repeats} repeats"
    )
    print("    steps/s, tokens/s = N x steps/s over the whole loop (an episode is T+1 steps);")
    print(
        "    step times are medians of each kind; 'rewards' = the reward pipeline inside "
        "the end step;"
    )
    print("    share = each kind's part of the loop time")
    head = (
        f"{'N':>5} {'steps/s':>9} {'tokens/s':>10} {'token step':>11} {'end step':>9} "
        f"{'(rewards)':>10} {'reset step':>11} {'share token':>12} {'end':>6} {'reset':>6}"
    )
    print(head)
    for r in results:
        sps = median(r.steps_per_s)
        print(
            f"{r.n:>5} {sps:>9,.0f} {r.n * sps:>10,.0f} {median(r.token_step_s) * 1e6:>8.1f} us"
            f" {median(r.end_step_s) * 1e3:>6.2f} ms {median(r.reward_s) * 1e3:>7.2f} ms"
            f" {median(r.reset_step_s) * 1e3:>8.2f} ms {median(r.share_token):>11.1%}"
            f" {median(r.share_end):>6.1%} {median(r.share_reset):>6.1%}"
        )
    for r in results:
        print(
            f"    N={r.n}: {r.episodes} episodes scored; token path alone: "
            f"{r.n / median(r.token_step_s):,.0f} tokens/s"
        )


# ------------------------------------------- (b) share of a decode step


def forward_kwargs(model) -> tuple[str, str]:
    """The cache argument and output names of this transformers version."""
    params = inspect.signature(model.forward).parameters
    return ("cache", "cache") if "cache" in params else ("past_key_values", "past_key_values")


def bench_decode_share(model, task: TextTask, args, device: torch.device, autocast: bool):
    """Per decode step: the model's one-token forward, sampling, env.step; one list each."""
    n = args.decode_batch
    env = TextGenVectorEnv(n, task=task, device=device, autoreset_mode="Disabled")
    cache_arg, cache_out = forward_kwargs(model)
    gen = torch.Generator(device=device).manual_seed(0)
    fwd, samp, env_token, env_end, env_all, fwd_all = [], [], [], [], [], []
    width, limit = task.prompt_width, task.max_new_tokens
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)
    for episode in range(args.decode_repeats + 1):  # the first episode warms up
        obs, _ = env.reset(seed=episode)
        attention = obs["attention_mask"][:, :width]  # (N, P)
        positions = position_ids(attention)  # (N, P)
        inputs, cache = obs["input_ids"][:, :width], None
        done = torch.zeros(n, dtype=torch.bool, device=device)
        for step in range(limit):
            sync(device)
            t0 = time.perf_counter()
            with ctx:
                out = model(
                    input_ids=inputs,
                    attention_mask=attention,
                    position_ids=positions,
                    use_cache=True,
                    **{cache_arg: cache},
                )
            cache = getattr(out, cache_out)
            logits = out.logits[:, -1, : task.vocab_size].float()  # (N, V)
            sync(device)
            t1 = time.perf_counter()
            actions = sample_tokens(logits, SamplingConfig(), gen)  # as generate_episodes draws
            sync(device)
            t2 = time.perf_counter()
            _, _, terminated, truncated, info = env.step(actions)
            sync(device)
            t3 = time.perf_counter()
            if episode and step:  # step 0 is the prefill forward
                fwd.append(t1 - t0)
                samp.append(t2 - t1)
                (env_end if "completion" in info else env_token).append(t3 - t2)
                fwd_all.append(t1 - t0)
                env_all.append(t3 - t2)
            done |= terminated | truncated
            if bool(done.all()):
                break
            inputs = actions.unsqueeze(1)  # (N, 1)
            attention = torch.cat([attention, torch.ones_like(inputs)], dim=1)
            positions = positions[:, -1:] + 1  # (N, 1)
    env.close()
    return {
        "forward": median(fwd),
        "sample": median(samp),
        "env_token": median(env_token),
        "env_end": median(env_end),
        "share_step": median(env_token) / median(fwd),
        "share_amortized": sum(env_all) / sum(fwd_all),
        "steps": len(fwd),
        "end_steps": len(env_end),
    }


def print_decode_share(rows: list[tuple[str, dict]], args) -> None:
    print(
        f"\n(b) env.step vs the model's one-token forward with KV cache, N={args.decode_batch}, "
        f"{args.decode_repeats} episodes of up to T={args.max_new_tokens}, medians per step"
    )
    print("    sample = softmax + inverse-CDF draw, generate_episodes' own sampler")
    print(
        "    share/step = env token step / forward; amortized = sum(env.step) / sum(forward)"
        " over all decode steps, episode-end scoring included (goal <= 5 %)"
    )
    head = (
        f"{'precision':<15} {'forward':>9} {'sample':>9} {'env token':>10} {'env end':>9}"
        f" {'share/step':>11} {'amortized':>10}"
    )
    print(head)
    for name, r in rows:
        print(
            f"{name:<15} {r['forward'] * 1e3:>6.2f} ms {r['sample'] * 1e3:>6.3f} ms"
            f" {r['env_token'] * 1e6:>7.1f} us {r['env_end'] * 1e3:>6.2f} ms"
            f" {r['share_step']:>11.2%} {r['share_amortized']:>10.2%}"
        )
    for name, r in rows:
        print(f"    {name}: {r['steps']} decode steps, {r['end_steps']} with episode ends")


# ------------------------------------------------------------- profiling


def profile_steps(task: TextTask, n: int, device: torch.device) -> None:
    """torch.profiler over token steps, cProfile over end + reset steps (--profile)."""
    from torch.profiler import ProfilerActivity, profile

    env = TextGenVectorEnv(n, task=task, device=device, autoreset_mode="NextStep")
    t = task.max_new_tokens
    pool = action_pool(task)
    actions = pool[torch.randint(len(pool), (3 * (t + 1), n))].to(device)
    env.reset(seed=0)
    for s in range(t + 1):  # warm up one episode
        env.step(actions[s])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(t - 1):  # token steps only
            env.step(actions[s])
    print(f"\n--profile: torch ops of {t - 1} token steps, N={n}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    pr = cProfile.Profile()
    pr.enable()
    for s in range(2):  # the end step, then the reset step
        env.step(actions[s])
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("cumulative").print_stats(20)
    print(f"--profile: cProfile of one end step + one reset step, N={n}")
    print(out.getvalue())


# ------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model (and tokenizer) name or path")
    parser.add_argument("--reward", default=DEFAULT_REWARD, help="reward spec")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 256], help="N for (a)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="T, the episode length")
    parser.add_argument(
        "--episodes", type=int, default=20, help="(a) episodes per row in one timed repeat"
    )
    parser.add_argument("--repeats", type=int, default=5, help="(a) timed repeats")
    parser.add_argument("--decode-batch", type=int, default=16, help="(b) N")
    parser.add_argument("--decode-repeats", type=int, default=5, help="(b) timed episodes")
    parser.add_argument(
        "--precisions",
        nargs="*",
        default=["fp32", "bf16-autocast"],
        choices=["fp32", "bf16-autocast"],
        help="(b) none: skip (b)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print profiler tables of the step path at the largest N",
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    torch.manual_seed(0)
    task = TextTask.build(model=args.model, reward=args.reward, max_new_tokens=args.max_new_tokens)
    task.rewards = TimedRewards(task.rewards)
    print("env_step benchmark")
    print(
        f"  machine: {platform.machine()}, {torch.get_num_threads()} torch threads "
        f"({torch.get_num_interop_threads()} inter-op), os.cpu_count={os.cpu_count()}, "
        f"{platform.processor() or platform.platform()}"
    )
    print(f"  torch {torch.__version__}, python {platform.python_version()}, device {device}")
    print(f"  load average at start: {_load()} (other processes share these cores)")
    print(
        f"  model/tokenizer {args.model!r}: vocab {task.vocab_size}, prompt width P="
        f"{task.prompt_width}, {len(task.prompts)} prompts; reward {args.reward!r}"
    )

    with torch.inference_mode():
        results = [bench_null_policy(task, n, args, device) for n in args.sizes]
        print_null_policy(results, args)
        if args.precisions:
            model = load_causal_lm(args.model, device=device)
            params = sum(p.numel() for p in model.parameters())
            print(
                f"\n  decode model: {type(model).__name__}, {params / 1e6:.1f} M parameters, "
                f"{next(model.parameters()).dtype}"
            )
            rows = [
                (name, bench_decode_share(model, task, args, device, name == "bf16-autocast"))
                for name in args.precisions
            ]
            print_decode_share(rows, args)
        if args.profile:
            profile_steps(task, max(args.sizes), device)
    print(f"\n  total {time.perf_counter() - start:.0f} s, load average at end: {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
