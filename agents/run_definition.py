"""A run's definition: what a checkpoint records about the task it trains on, so that resuming continues the
same run, or refuses.

Recorded (in ``trainer_state.json`` under ``"run"``, the prompt texts themselves in ``prompts.json``): the model
as named (and its absolute path when it is a local directory), the tokenizer's class, the prompts' source with
their count and two fingerprints (sha256 of the prompt texts; sha256 of their token ids as encoded, which
catches another tokenizer, chat template or prompt width), the reward spec as written and as parsed terms
(a function term by its qualified name ``module:qualname``), ``max_new_tokens``, ``max_prompt_tokens`` and the
prompt width P, ``chat_template``, the EOS ids and the vocabulary size; for a LoRA policy, where its base
weights come from (:data:`LORA_BASE`, set by the agent).

:func:`rebuild_task` makes the task again from a checkpoint alone (``PPO.load(path)`` without an env): the
tokenizer saved beside the weights, the recorded prompt texts and reward terms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from textenv.agents.checkpoint import CheckpointError, read_json
from textenv.envs.task import TextTask

PROMPTS_FILE = "prompts.json"
LORA_BASE = "lora_base"
"""A LoRA run's key: where its base weights come from (a hub id, or a directory as an absolute path). Its
checkpoints' ``model/`` holds the adapter only, so loading rebuilds the base from here (not compared: the
model recorded beside it is)."""

_COMPARED = {  # recorded key: how a difference is named
    "model": "model",
    "tokenizer": "tokenizer",
    "prompts": "prompts",
    "reward_terms": "reward",
    "max_new_tokens": "max_new_tokens",
    "prompt_width": "prompt width (max_prompt_tokens)",
    "chat_template": "chat_template",
    "eos_token_ids": "eos_token_ids",
    "vocab_size": "vocab_size",
    "encoded_prompts": "the prompts' token ids (tokenizer, chat template or width)",
}


def describe_task(task: TextTask) -> dict[str, Any]:
    """The run's definition, as JSON-able values (see the module's docstring)."""
    options = task.options
    model_path = None
    if task.model_name is not None and Path(task.model_name).expanduser().is_dir():
        model_path = str(Path(task.model_name).expanduser().resolve())
    reward = options.get("reward")
    return {
        "model": task.model_name,
        "model_path": model_path,
        "tokenizer": type(task.tokenizer).__name__,
        "prompts": {
            "source": _describe_source(options.get("prompts")),
            "count": len(task.prompts),
            "sha256": prompts_fingerprint(task.prompts),
        },
        "reward": reward if isinstance(reward, str) else None,
        "reward_terms": reward_terms(task),
        "reward_timeout": options.get("reward_timeout"),
        "max_new_tokens": task.max_new_tokens,
        "max_prompt_tokens": options.get("max_prompt_tokens"),
        "prompt_width": task.prompt_width,
        "chat_template": task.chat_template,
        "eos_token_ids": [int(i) for i in task.eos_ids],
        "vocab_size": int(task.vocab_size),
        "encoded_prompts": hashlib.sha256(
            task.prompt_ids.cpu().numpy().tobytes() + task.prompt_mask.cpu().numpy().tobytes()
        ).hexdigest(),
    }


def prompts_fingerprint(texts: list[str]) -> str:
    """sha256 of the prompt texts (as rendered), in order."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def reward_terms(task: TextTask) -> list[dict[str, Any]]:
    """The reward pipeline's terms as parsed: ``{"source", "weight", "normalize", "clip", "options"}`` and, for
    a function given in the spec, ``"function": "module:qualname"`` (so two spellings of one spec compare equal)."""
    terms = []
    for term in task.rewards.terms:
        spec = term.spec
        record = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in ("name", "fn")}
        record = {"source": spec.name, **json.loads(json.dumps(record, default=repr))}
        if spec.fn is not None:
            record["function"] = f"{spec.fn.__module__}:{spec.fn.__qualname__}"
        terms.append(record)
    return terms


def parsed_reward_terms(spec: Any) -> list[dict[str, Any]]:
    """What :func:`reward_terms` records for a reward spec, from the spec alone (no source is looked up)."""
    from textenv.rewards import parse_reward_spec

    terms = []
    for term in parse_reward_spec(spec):
        record = {f.name: getattr(term, f.name) for f in dataclasses.fields(term) if f.name not in ("name", "fn")}
        terms.append({"source": term.name, **json.loads(json.dumps(record, default=repr))})
    return terms


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two definitions, one phrase each (``reward: 'length' where the checkpoint has
    'sentiment + length'``)."""
    found = []
    for key, what in _COMPARED.items():
        if key not in recorded:
            continue
        old, new = recorded[key], current.get(key)
        if key == "model" and old != new and recorded.get("model_path") and recorded["model_path"] == current.get(
                "model_path"):
            continue  # the same directory, named another way
        if key == "prompts":
            old, new = old["sha256"], (new or {}).get("sha256")
            if old != new:
                found.append(f"prompts: {current['prompts']['count']} from {current['prompts']['source']} where "
                             f"the checkpoint has {recorded['prompts']['count']} from {recorded['prompts']['source']} "
                             "(their sha256 differs)")
            continue
        if key == "encoded_prompts" and found:
            continue  # follows from what was named already
        if old != new:
            if key == "reward_terms":
                old = recorded.get("reward") or _terms_text(old)
                new = current.get("reward") or _terms_text(new)
            found.append(f"{what}: {new!r} where the checkpoint has {old!r}")
    return found


def rebuild_task(path: Path, run: dict[str, Any], plugin_manager: Any = None) -> TextTask:
    """The checkpoint's task, made from what it records: its tokenizer (saved in ``model/``), prompt texts and
    reward terms.

    Raises:
        CheckpointError: a recorded file is unreadable, a reward function cannot be imported, or the task made
            differs from the one recorded (named).
    """
    from textenv.models import load_tokenizer

    prompts = read_json(path / PROMPTS_FILE)
    try:
        texts = [str(t) for t in prompts["texts"]]
        templated = frozenset(texts[i] for i in prompts["templated"])
    except (KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{path / PROMPTS_FILE}: not a prompts record ({exc!r})") from None
    saved = path / "model"
    has_tokenizer = any((saved / name).exists() for name in ("tokenizer_config.json", "tokenizer.json"))
    tokenizer = load_tokenizer(str(saved) if has_tokenizer else run.get("model_path") or run["model"])
    reward = [_term_spec(term) for term in run["reward_terms"]]
    extra = {"reward_timeout": run["reward_timeout"]} if run.get("reward_timeout") is not None else {}
    task = TextTask.build(
        model=run["model"], tokenizer=tokenizer, prompts=texts, max_new_tokens=run["max_new_tokens"],
        max_prompt_tokens=run["prompt_width"], reward=reward, eos_token_ids=run["eos_token_ids"],
        vocab_size=run["vocab_size"], plugin_manager=plugin_manager, **extra,
    )
    if run["chat_template"]:  # the texts are rendered already: wrap the plain ones only, as the first task did
        task.chat_template, task.templated = True, templated
        task.prompt_ids, task.prompt_mask = task.encode(texts, width=run["prompt_width"])
    task.options.update(prompts=run["prompts"]["source"], reward=run.get("reward") or reward,
                        max_prompt_tokens=run.get("max_prompt_tokens"))
    problems = differences(run, describe_task(task))
    if problems:
        raise CheckpointError(f"{path}: the task rebuilt from the checkpoint differs from the one it records: "
                              f"{'; '.join(problems)}; give PPO.load an env")
    return task


def prompts_record(task: TextTask) -> dict[str, Any]:
    """The ``prompts.json`` record: the rendered texts and which came from conversations."""
    return {"texts": list(task.prompts), "templated": [i for i, t in enumerate(task.prompts) if t in task.templated]}


def _term_spec(term: dict[str, Any]) -> dict[str, Any]:
    """A recorded term as a reward-spec dict (``{"source": name or function, "weight": ..., ...}``)."""
    term = dict(term)
    source: Any = term.pop("source")
    function = term.pop("function", None)
    if function is not None:
        source = _import_function(function, source)
    options = term.pop("options", {}) or {}
    defaults = {"weight": 1.0, "normalize": False, "clip": None}
    keep = {k: v for k, v in term.items() if k in defaults or v is not None}
    return {"source": source, **keep, **options}


def _import_function(qualified: str, name: str) -> Any:
    module_name, _, qualname = qualified.partition(":")
    try:
        module = sys.modules.get(module_name) or importlib.import_module(module_name)
        value: Any = module
        for part in qualname.split("."):
            value = getattr(value, part)
    except Exception as exc:  # noqa: BLE001 - any failure to import is said in one line
        raise CheckpointError(
            f"the run's reward term {name!r} is the function {qualified}, which cannot be imported here "
            f"({type(exc).__name__}: {exc}); give PPO.load an env built with that reward"
        ) from None
    return value


def _describe_source(prompts: Any) -> str:
    if isinstance(prompts, (str, Path)):
        return str(prompts)
    if prompts is None:
        return "unknown"
    kind = type(prompts)
    if kind.__module__.startswith("datasets"):
        return f"a datasets.{kind.__name__}"
    return f"a {kind.__name__} of prompts"


def _terms_text(terms: list[dict[str, Any]]) -> str:
    parts = []
    for t in terms or []:
        options = ", ".join(f"{k}={v!r}" for k, v in (t.get("options") or {}).items())
        parts.append(f"{t['weight']:g}*{t.get('function') or t['source']}{f'({options})' if options else ''}")
    return " + ".join(parts)
