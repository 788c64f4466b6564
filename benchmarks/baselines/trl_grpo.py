"""Baseline: trl 1.16's ``GRPOTrainer`` on the textenv default workload.

Runs in its own venv (``bash benchmarks/baselines/setup_trl116.sh``): trl 1.16 on the
project's own transformers 5.24, torch 2.13, accelerate 1.15.

Workload (one optimizer step): 4 movie-review openings x 4 sampled completions of exactly
32 tokens (max_completion_length=32, generation_kwargs min_new_tokens=32; trl's sampling
defaults temperature 1, top_k 0, top_p 1) -> VADER compound of each completion -> one
GRPO update on the 16 completions (per_device_train_batch_size 16, num_generations 4,
num_iterations 1, beta 0: no reference model, no KL term). trl's other defaults
(AdamW lr 1e-6, gradient checkpointing on, loss_type, scale_rewards, ...).

Per step it times: the step (a TrainerCallback around each optimizer step), generation,
reward (trl's own profiling contexts, recorded by patching where they report), the rest of
``_prepare_inputs`` (tokenizing, padding, advantages) and the update (step minus
``_prepare_inputs``: loss forward, backward, optimizer). One warm-up step, then ``--steps``
timed steps; prints ONE JSON line of medians.

    benchmarks/baselines/.venv-trl116/bin/python benchmarks/baselines/trl_grpo.py \
        --precision bf16 --steps 3
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict

from baseline_common import common_parser, cpu_seconds, log_step, print_summary, read_prompts, require_trl


def parse_args(argv=None):
    p = common_parser(__doc__.split("\n")[0], precision="bf16", step="optimizer step",
                      precision_help="bf16 mixed precision (trl's default) or fp32")
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--generations", type=int, default=4, help="completions per prompt")
    p.add_argument("--gradient-checkpointing", choices=("on", "off"), default="on",
                   help="trl's GRPOConfig default is on")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    require_trl("1.16.0", "trl116")
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    transformers.logging.set_verbosity_error()

    # trl times its phases with ProfilingContext but reports only to wandb/mlflow/trackio:
    # keep the durations here instead.
    phase_s: dict[str, float] = defaultdict(float)
    original_log = profiling.ProfilingContext._log_metrics

    def record(self, duration: float) -> None:
        phase_s[self.name] += duration
        original_log(self, duration)

    profiling.ProfilingContext._log_metrics = record

    analyzer = SentimentIntensityAnalyzer()
    step_rewards: list[float] = []
    step_tokens: list[int] = []

    def vader(completions, completion_ids=None, **kwargs) -> list[float]:
        """VADER compound score of each completion, in [-1, 1]."""
        scores = [analyzer.polarity_scores(c)["compound"] for c in completions]
        step_rewards.extend(scores)
        step_tokens.append(sum(len(ids) for ids in completion_ids or []))
        return scores

    rows: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            phase_s.clear()
            step_rewards.clear()
            step_tokens.clear()
            self.load0, self.cpu0 = os.getloadavg()[0], cpu_seconds()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            wall = time.perf_counter() - self.t0
            prep = phase_s.get("GRPOTrainer._prepare_inputs", 0.0)
            gen = phase_s.get("GRPOTrainer.transformers.generate", 0.0)
            rew = phase_s.get("GRPOTrainer._calculate_rewards", 0.0)
            tokens = sum(step_tokens)
            row = {
                "step_s": wall,
                "generate_s": gen,
                "reward_s": rew,
                "prepare_other_s": prep - gen - rew,
                "update_s": wall - prep,
                "tokens": tokens,
                "tokens_per_s": tokens / wall,
                "reward_mean": statistics.fmean(step_rewards) if step_rewards else float("nan"),
                "cpu_util": (cpu_seconds() - self.cpu0) / wall,
                "loadavg_1m": max(self.load0, os.getloadavg()[0]),
            }
            i = state.global_step
            tag = "warmup" if i <= args.warmup else f"step {i - args.warmup}/{args.steps}"
            log_step(f"trl116 grpo {args.precision}", tag, row)
            if i > args.warmup:
                rows.append(row)

    prompts = read_prompts(args.prompts)
    dataset = Dataset.from_dict({"prompt": prompts})
    total_steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="trl-grpo-bench-") as out:
        config = GRPOConfig(
            output_dir=out,
            use_cpu=True,
            bf16=args.precision == "bf16",
            per_device_train_batch_size=args.prompts_per_step * args.generations,
            gradient_accumulation_steps=1,
            num_generations=args.generations,
            max_completion_length=args.new_tokens,
            generation_kwargs={"min_new_tokens": args.new_tokens},
            num_iterations=1,
            beta=0.0,
            gradient_checkpointing=args.gradient_checkpointing == "on",
            max_steps=total_steps,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=args.seed,
        )
        trainer = GRPOTrainer(
            model=str(args.model_dir),
            reward_funcs=vader,
            args=config,
            train_dataset=dataset,
            callbacks=[StepTimer()],
        )
        model = trainer.model
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        print(
            f"[trl116 grpo] lm_head tied to embed_tokens: {tied}; params dtype "
            f"{next(model.parameters()).dtype}; autocast bf16: {trainer.args.bf16}",
            file=sys.stderr,
            flush=True,
        )
        # the Trainer prints its log dicts to stdout: keep stdout for the one JSON line
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train()

    print_summary(
        system="trl-1.16-GRPOTrainer", precision=args.precision, rows=rows,
        phases=("generate_s", "reward_s", "prepare_other_s", "update_s"), warmup=args.warmup,
        workload={"prompts": args.prompts_per_step, "generations": args.generations, "new_tokens": args.new_tokens,
                  "num_iterations": 1, "beta": 0.0, "gradient_checkpointing": args.gradient_checkpointing == "on"},
        versions={"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        torch_threads=torch.get_num_threads(),
    )


if __name__ == "__main__":
    main()
