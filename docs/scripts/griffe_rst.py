"""Griffe extension: read the few reStructuredText habits of textenv's Google-style docstrings as Markdown.

* Sphinx roles (``:class:`PPO```, ``:func:`~textenv.models.load_causal_lm```) become inline code
  with the name as written (``~`` keeps the last part), as Sphinx shows them.
* A paragraph ending in ``::`` followed by an indented block (``Example::``) becomes the
  paragraph with one colon and a fenced Python block.

The docstrings stay as they are in the code; only the rendered API pages change.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj):`~?([^`]+)`")


def _role(match: re.Match) -> str:
    text = match.group(0)
    name = match.group(1)
    if "~" in text:
        name = name.rsplit(".", 1)[-1]
    return f"`{name}`"


def _literal_blocks(text: str) -> str:
    """``para::`` + blank line + indented lines -> ``para:`` + a fenced block."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            indent = len(line) - len(line.lstrip())
            j = i + 1
            block = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
                j -= 1
            if block:
                body = [b for b in block if b.strip()]
                cut = min(len(b) - len(b.lstrip()) for b in body)
                prefix = line[:indent]
                head = line.rstrip()[:-1]  # "Example::" -> "Example:"
                if head.strip() == ":":  # a bare "::" introduces the block without words
                    head = ""
                while not block[0].strip():
                    block.pop(0)
                out += [*([head] if head else []), "", f"{prefix}```python"]
                out += [f"{prefix}{b[cut:]}" if b.strip() else "" for b in block]
                out += [f"{prefix}```"]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RestructuredTextHabits(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _literal_blocks(ROLE.sub(_role, obj.docstring.value))
