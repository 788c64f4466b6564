"""LoRA for the PPO agent, through ``peft``: the adapters on the policy, the reference that shares its base.

With ``lora_rank > 0`` the policy is the model wrapped by :func:`peft.get_peft_model`: its base weights are
frozen and only the low-rank adapters (and the value head) train. The KL reference is not a copy: it is the
same :class:`peft.PeftModel` called with its adapter disabled (:class:`AdapterDisabled`), so the base weights
are held once. LoRA's B matrices start at zero, so before the first step the policy *is* the reference, and
their log-probs are equal bit for bit (the adapter adds an exact zero).

A checkpoint's ``model/`` then holds the adapter only (``adapter_config.json``, ``adapter_model.safetensors``);
the base is rebuilt from where the run definition says it came from. ``textenv export`` merges it into a plain
transformers model (:func:`merged`).

``peft`` is an optional dependency: ``pip install 'textenv[lora]'``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
"""What marks a directory as a PEFT adapter (PEFT's own file name)."""

INSTALL_HINT = "pip install 'textenv[lora]'"


def peft_available() -> bool:
    """Whether ``peft`` can be imported (found without importing it: the import takes a second)."""
    return importlib.util.find_spec("peft") is not None


def require_peft(what: str) -> None:
    """Raise a one-line ``ValueError`` naming ``what`` needs peft, when it is not installed."""
    if not peft_available():
        raise ValueError(f"{what} needs peft: {INSTALL_HINT}")


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a :class:`peft.PeftModel` (False without peft installed: then none can exist)."""
    if not peft_available():
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a PEFT adapter (a LoRA checkpoint's ``model/``) rather than a whole model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def target_modules(text: str) -> list[str] | str:
    """``lora_target_modules`` as peft takes it: a list of module names, or ``"all-linear"`` as is."""
    names = [name.strip() for name in text.split(",")]
    return "all-linear" if names == ["all-linear"] else names


def wrap(model: nn.Module, *, rank: int, alpha: float, dropout: float, targets: str, base: str | None) -> nn.Module:
    """The model with fresh LoRA adapters: only they train; their B matrices are zero, so nothing changes yet.

    Args:
        model: a transformers causal LM (fp32).
        rank: the config's ``lora_rank``.
        alpha: its ``lora_alpha``.
        dropout: its ``lora_dropout``.
        targets: its ``lora_target_modules``.
        base: where the base weights come from (a hub id or a directory), recorded in the adapter's config so
            that ``PeftModel.from_pretrained`` and ``AutoPeftModelForCausalLM`` find it.

    Raises:
        ValueError: no module of the model matches ``targets`` (one line, naming the option).
    """
    require_peft("lora_rank")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules(targets),
                        bias="none", task_type="CAUSAL_LM")
    try:
        with _quiet_peft():
            peft_model = get_peft_model(model, config)
    except ValueError as exc:
        names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"lora_target_modules {targets!r}: {str(exc).splitlines()[0]} (its Linear layers: "
                         f"{', '.join(names)})") from None
    if base is not None:
        peft_model.peft_config["default"].base_model_name_or_path = base
    return peft_model


def load(base: nn.Module, adapter_dir: str | Path, *, trainable: bool = True) -> nn.Module:
    """``base`` with the adapter saved in ``adapter_dir`` (by :meth:`PPO.save`, or ``textenv export``)."""
    require_peft(f"{adapter_dir} (a LoRA adapter)")
    from peft import PeftModel

    with _quiet_peft():
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft asks transformers 5 a deprecated question (``is_gradient_checkpointing``) each time it wraps a model:
    a warning for peft's maintainers, not for our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def base_source(peft_model: nn.Module) -> str | None:
    """Where the adapter's base weights come from (a hub id or a directory), as its config records it."""
    return peft_model.peft_config[peft_model.active_adapter].base_model_name_or_path or None


class AdapterDisabled:
    """The KL reference of a LoRA policy: the policy's own :class:`peft.PeftModel`, called with its adapter
    disabled. It holds no weights of its own; calling it runs the base model, as the reference must."""

    def __init__(self, peft_model: nn.Module):
        self.model = peft_model

    def __call__(self, **inputs: Any) -> Any:
        with self.model.disable_adapter():
            return self.model(**inputs)


def store_base_in_bf16(peft_model: nn.Module) -> None:
    """Keep the frozen base's Linear weights in bf16, for a model that only runs under bf16 autocast.

    As for a frozen reference (:func:`textenv.devices.store_linear_weights_in_bf16`): autocast casts each fp32
    weight to the same bf16 value at every forward, so the logits do not change, and the base takes half the
    memory. The adapters stay fp32 (they are the master weights Adam steps), and so do the input embedding,
    the norms and a head tied to the embedding.
    """
    tied = peft_model.get_input_embeddings().weight
    for name, module in peft_model.named_modules():
        if isinstance(module, nn.Linear) and "lora_" not in name and module.weight is not tied:
            module.to(torch.bfloat16)


def set_adapter_dropout(peft_model: nn.Module, on: bool) -> None:
    """Switch the adapters' dropout on (the update) or off, whatever the model's own train/eval mode.

    PPO runs the model in eval mode throughout, so that an unchanged policy has ratio 1; ``lora_dropout`` acts
    in the update's forwards only.
    """
    for name, module in peft_model.named_modules():
        if name.endswith("lora_dropout.default"):
            module.train(on)


def merged(peft_model: nn.Module) -> nn.Module:
    """The plain transformers model with the adapter folded into its weights (W + B A * alpha / r)."""
    return peft_model.merge_and_unload()
