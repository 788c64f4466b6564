"""Reward sources and the reward pipeline.

A reward source is a plain function that scores a batch of finished episodes. It
takes only the context arguments it names, among:

* ``prompts`` (list[str]): the prompt of each episode;
* ``completions`` (list[str]): the decoded completion (special tokens skipped);
* ``completion_ids`` (list[list[int]]): the tokens the agent chose, EOS included;
* ``terminated`` (list[bool]): True where the episode ended on EOS, False where it
  hit the length limit;
* ``tokens`` (list[list[str]]): each token of ``completion_ids`` decoded on its own
  (for per-token sources that show or judge tokens; decoded only when a source asks);

plus any options given in the reward spec (``length(target=20)`` calls it with
``target=20``), and the prompts' other dataset columns (``solution``, one value per
completion, None for a prompt outside the dataset), as TRL's GRPOTrainer passes them: to a
parameter of that name that is not keyword-only (keyword-only ones are options), and to
``**kwargs``. It returns one float per completion, or, for per-token rewards (TAMER, shaping),
one sequence per completion with one float per token of ``completion_ids``.

None for a completion means the source does not apply to it (TRL's convention, where it becomes
NaN and is left out of the sum): that term adds 0 to the completion's reward, its raw value is
NaN, and the term's normalization statistics never see it.

A function taking ``**kwargs`` gets every context argument, so TRL's
``fn(prompts, completions, **kwargs)`` works as it is; such functions may be given in
a spec directly (``reward=[fn, "sentiment"]``), each term named by its ``__name__``.

The pipeline calls every source of a spec once per batch, checks what each returns
(its type and shape, count, NaN/inf, magnitude, exceptions: each error names the source and
the offending item), applies per-term running normalization, clipping and weights, and keeps
every term by name. Inside :meth:`RewardPipeline.one_batch` every call normalizes with the same
statistics, which take the whole batch in at the end (fresh statistics take the batch's first values in
first).

A source may be given a deadline per call (``sentiment(timeout=5)``, or the pipeline's default,
see :class:`RewardPipeline`): past it, :class:`RewardTimeout` names the source. A Ctrl-C during
a source's call raises :class:`RewardInterrupted`, a ``KeyboardInterrupt`` that names the source.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import copy
import inspect
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from stable_baselines3.common.running_mean_std import RunningMeanStd

from textenv.devices import launched_processes

CONTEXT_ARGS = ("prompts", "completions", "completion_ids", "terminated", "tokens")
TERM_OPTIONS = ("weight", "normalize", "clip", "timeout")
TIMEOUT_ENV = "TEXTENV_REWARD_TIMEOUT"
"""The environment variable that gives every reward term a default timeout in seconds (when the pipeline is
given none); unset or empty: no timeout."""

SLOW_CALL_SECONDS = 60.0
"""A source's call without a timeout that has run this long gets one warning per term, which says how to set
``timeout=`` (a source that never returns would otherwise hang a run without a word)."""

INTERRUPT_GRACE_SECONDS = 3.0
"""After a first Ctrl-C that the running loop's handler only notes (PPO's "finish this iteration, then stop"),
how long a source's call may still take before it is interrupted (:class:`RewardInterrupted`): a call that
never returns would otherwise never see the Ctrl-C."""

MAX_ABS_REWARD = 1e6
"""The largest magnitude a term's value may have once weighted, normalized and clipped (what enters the PPO
loss). Past it the squared value loss and the advantages lose all precision and soon overflow float32, so the
pipeline refuses it naming the source, rather than letting training stop later on "the loss is nan"."""


class RewardError(ValueError):
    """A reward spec or a reward source's result is wrong; the message says which."""


class RewardTimeout(RewardError):
    """A reward source did not return within its timeout; the message names the source and the timeout."""


class RewardInterrupted(KeyboardInterrupt):
    """Ctrl-C while a reward source was scoring a batch: a ``KeyboardInterrupt`` whose message names the source.

    The batch's rewards are lost. A training loop treats it as any interrupt: the PPO agent's ``learn``
    saves the state after the last complete iteration, and ``textenv train`` exits with status 130.
    """


@dataclass(frozen=True)
class RewardSource:
    """A named reward function, as plugins provide it.

    Attributes:
        name: the name used in reward specs.
        fn: the scoring function (see the module docstring for its arguments).
        description: one line for ``textenv plugins``; defaults to the first line of
            ``fn``'s docstring.
        origin: where the source came from (built-in, entry point, script); the
            plugin manager fills it in.
        check_options: called with a term's options (``check_options(target=-1)``) when a pipeline
            is built, so that a bad option is refused before any episode runs; it raises
            ``ValueError`` (or ``TypeError``) saying what is wrong. None: options are checked at the call.
    """

    name: str
    fn: Callable[..., Any]
    description: str = ""
    origin: str = ""
    check_options: Callable[..., None] | None = None

    interactive: ClassVar[bool] = False
    """A source that talks to a person at the terminal (``human``): a trainer then draws no progress bar
    of its own into the person's screen."""

    def __post_init__(self) -> None:
        if not self.description:
            doc = inspect.getdoc(self.fn) or ""
            object.__setattr__(self, "description", doc.split("\n", 1)[0])

    def bind(self, options: Mapping[str, Any]) -> Callable[[dict[str, Any]], Any]:
        """Return ``call(context)`` that calls ``fn`` with the context it names and the options.

        Raises:
            RewardError: an option the function does not accept, or one that ``check_options`` refuses.
        """
        params = inspect.signature(self.fn).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        accepted = [n for n, p in params.items() if p.kind is not p.VAR_KEYWORD]
        for key in options:
            if key in CONTEXT_ARGS or (key not in params and not takes_kwargs):
                known = [n for n in accepted if n not in CONTEXT_ARGS] + list(TERM_OPTIONS)
                raise RewardError(
                    f"reward source {self.name!r} has no option {key!r}; "
                    f"its options are: {', '.join(known)}"
                )
        if self.check_options is not None:
            try:
                self.check_options(**options)
            except (ValueError, TypeError) as exc:
                raise RewardError(f"reward term {self.name!r}: {exc}") from None
        fn, opts = self.fn, dict(options)
        # Dataset columns reach **kwargs and the parameters named like them, never a keyword-only one (an option)
        wanted = {a for a, p in params.items() if a in CONTEXT_ARGS or p.kind is p.POSITIONAL_OR_KEYWORD} - set(opts)

        def call(context: dict[str, Any]) -> Any:
            if takes_kwargs:
                return fn(**{a: v for a, v in context.items() if a not in opts}, **opts)
            return fn(**{a: context[a] for a in wanted if a in context}, **opts)

        call.wants_tokens = "tokens" in params  # type: ignore[attr-defined]
        return call


def function_source(fn: Callable[..., Any], name: str | None = None) -> RewardSource:
    """A reward function as a source: the one ``@textenv.reward`` made for it, or a new one named ``name``.

    Args:
        fn: the scoring function.
        name: the source name; ``fn.__name__`` by default.
    """
    made = getattr(fn, "reward_source", None)
    if isinstance(made, RewardSource) and made.fn is fn:
        return made
    return RewardSource(name or _function_name(fn), fn, origin=f"function {definition_site(fn)}")


def definition_site(fn: Callable[..., Any]) -> str:
    """Where a function was defined, for error messages: ``FILE:LINE``, or its module without a source file."""
    try:
        return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return getattr(fn, "__module__", None) or "?"


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class TermSpec:
    """One term of a reward spec: ``weight * name(**options)``.

    ``fn`` is set where the spec gave a function instead of a source name; ``name`` is then
    the function's ``__name__``.
    """

    name: str
    weight: float = 1.0
    normalize: bool = False
    clip: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    fn: Callable[..., Any] | None = None
    timeout: float | None = None


_TERM_RE = re.compile(
    r"^(?:(?P<weight>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)\s*\*\s*)?"
    r"(?P<name>[A-Za-z_][\w.:/\\~-]*)\s*(?:\((?P<args>.*)\))?$",
    re.DOTALL,
)


def parse_reward_spec(spec: Any) -> list[TermSpec]:
    """Turn a reward spec into terms.

    Accepted forms:
        * ``"sentiment + 0.5*length(target=20) - repetition"``;
        * ``{"sentiment": 1.0, "length": {"weight": 0.5, "target": 20}}``;
        * ``["sentiment", {"source": "length", "weight": 0.5, "target": 20}]``;
        * a function, or functions among the list items, as TRL takes reward functions:
          ``fn``, ``[fn, "sentiment"]``, ``{"source": fn, "weight": 0.5}``. The term is named
          by the function's ``__name__``, so it must have one (``def``, not ``lambda``).

    Per-term keys ``weight``, ``normalize`` (running mean/std), ``clip`` (symmetric
    bound, applied after normalization) and ``timeout`` (seconds per call, see
    :class:`RewardPipeline`) are ours; every other key is an option of the source.

    Raises:
        RewardError: the spec cannot be read; the message quotes the bad part.
    """
    if isinstance(spec, str):
        return [_parse_term(sign, text) for sign, text in _split_terms(spec)]
    if callable(spec):
        return [TermSpec(name=_function_name(spec), fn=spec)]
    if isinstance(spec, Mapping):
        return [_term_from_mapping(name, value) for name, value in spec.items()]
    if isinstance(spec, Sequence):
        terms = []
        for item in spec:
            if isinstance(item, str):
                terms.extend(parse_reward_spec(item))
            elif callable(item):
                terms.append(TermSpec(name=_function_name(item), fn=item))
            elif isinstance(item, Mapping) and "source" in item:
                item = dict(item)
                terms.append(_term_from_mapping(item.pop("source"), item))
            else:
                raise RewardError(
                    f"reward spec list items are names or dicts with a 'source' key, or functions, got {item!r}"
                )
        return terms
    raise RewardError(f"a reward spec is a string, dict or list, or a function, got {type(spec).__name__}")


def _function_name(fn: Callable[..., Any]) -> str:
    """The term name of a reward function given in a spec: its ``__name__`` (or the name ``@textenv.reward`` gave it).

    A lambda is refused rather than numbered (``lambda_0``): the name keys the term in
    ``info["reward_terms"]``, the logs and the checkpointed normalization statistics, and a
    position-based name would move to another function when the list changes.

    Raises:
        RewardError: the function has no usable name (a lambda, a partial, a callable object).
    """
    made = getattr(fn, "reward_source", None)
    if isinstance(made, RewardSource) and made.fn is fn:
        return made.name
    name = getattr(fn, "__name__", None)
    if not (isinstance(name, str) and name.isidentifier()):
        raise RewardError(
            f"reward function {fn!r} has no name to key its term by: define it with def "
            "(the name labels the term in info['reward_terms'], logs and checkpoints)"
        )
    return name


def _split_terms(spec: str) -> list[tuple[float, str]]:
    """Split at top-level ``+`` and at a ``-`` that stands alone between spaces (names may hold ``-``)."""
    if not spec.strip():
        raise RewardError("empty reward spec")
    parts: list[tuple[float, str]] = []
    start, sign = 0, 1.0
    stripped = spec.lstrip()
    if stripped.startswith("-"):
        sign, spec = -1.0, stripped[1:]
    for i in _separators(spec):
        parts.append((sign, spec[start:i]))
        sign, start = (1.0 if spec[i] == "+" else -1.0), i + 1
    parts.append((sign, spec[start:]))
    return parts


def _separators(spec: str) -> Iterator[int]:
    """Yield the index of each ``+`` or lone ``-`` outside brackets and quoted strings (``include=':)'``)."""
    depth, quote, escaped = 0, "", False
    for i, ch in enumerate(spec):
        if quote:  # inside a string: only its closing quote matters
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        is_minus = ch == "-" and spec[i - 1 : i].isspace() and spec[i + 1 : i + 2].isspace()
        if depth == 0 and (ch == "+" or is_minus):
            yield i


def _parse_term(sign: float, text: str) -> TermSpec:
    match = _TERM_RE.match(text.strip())
    if not match:
        raise RewardError(
            f"cannot read reward term {text.strip()!r}: expected NAME, WEIGHT*NAME or NAME(key=value, ...)"
        )
    options = _parse_options(match["args"]) if match["args"] else {}
    prefix = float(match["weight"] or 1.0)
    if not math.isfinite(prefix):  # 1e400 reads as inf
        raise RewardError(f"reward term {match['name']!r}: the weight {match['weight']} is not a finite number")
    weight = sign * prefix * _term_weight(match["name"], options.pop("weight", 1.0))
    return TermSpec(
        name=match["name"],
        weight=weight,
        normalize=_term_normalize(match["name"], options.pop("normalize", False)),
        clip=_term_clip(match["name"], options.pop("clip", None)),
        timeout=_term_timeout(match["name"], options.pop("timeout", None)),
        options=options,
    )


_BARE_VALUE = re.compile(r"""(?P<key>\b[A-Za-z_]\w*\s*=\s*)(?P<value>[^\s,()\[\]{}'"=]+)(?=\s*(?:,|$))""")


def _quote_bare_paths(args: str) -> str:
    """Quote unquoted path-like values (``db=runs/f.db``, ``path=/tmp/rm``), which Python can't read."""

    def quote(match: re.Match) -> str:
        value = match["value"]
        try:
            ast.literal_eval(value)  # a number, True/False/None: leave it
            return match[0]
        except (ValueError, SyntaxError):
            pass
        if value.isidentifier() or not any(c in value for c in "/.~\\:"):
            return match[0]  # a bare word is read as a string anyway
        return f"{match['key']}{value!r}"

    return _BARE_VALUE.sub(quote, args)


def _parse_options(args: str) -> dict[str, Any]:
    """Read ``key=value, ...``; values are Python literals, where a bare word or path is a string."""
    args = _quote_bare_paths(args)
    try:
        call = ast.parse(f"f({args})", mode="eval").body
    except SyntaxError as exc:
        raise RewardError(f"cannot read reward options ({args}): {exc.msg}") from None
    if call.args:
        raise RewardError(f"reward options are key=value, got a positional value in ({args})")
    options = {}
    for kw in call.keywords:
        value = _BareWordsAsStrings().visit(kw.value)
        try:
            options[kw.arg] = ast.literal_eval(value)
        except ValueError:
            raise RewardError(
                f"reward option {kw.arg}= must be a literal, got {ast.unparse(kw.value)}"
            ) from None
    return options


class _BareWordsAsStrings(ast.NodeTransformer):
    """``include=[good, great]`` reads as ``include=["good", "great"]``."""

    def visit_Name(self, node: ast.Name) -> ast.Constant:
        return ast.copy_location(ast.Constant(node.id), node)


def _term_from_mapping(name: str | Callable[..., Any], value: Any) -> TermSpec:
    fn = name if callable(name) else None
    name = _function_name(fn) if fn is not None else name
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return TermSpec(name=name, weight=_term_weight(name, value), fn=fn)
    if isinstance(value, Mapping):
        options = dict(value)
        return TermSpec(
            name=name,
            weight=_term_weight(name, options.pop("weight", 1.0)),
            normalize=_term_normalize(name, options.pop("normalize", False)),
            clip=_term_clip(name, options.pop("clip", None)),
            timeout=_term_timeout(name, options.pop("timeout", None)),
            options=options,
            fn=fn,
        )
    raise RewardError(f"reward term {name!r}: expected a weight or a dict of options, got {value!r}")


def _term_weight(name: str, value: Any) -> float:
    """Read a term's weight: a finite number (``1e400`` reads as inf).

    Raises:
        RewardError: anything else, naming the term.
    """
    try:
        weight = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        weight = None
    if weight is None or not np.isfinite(weight):
        raise RewardError(f"reward term {name!r}: weight= must be a finite number, got {value!r}")
    return weight


def _term_normalize(name: str, value: Any) -> bool:
    """Read a term's ``normalize``: a bool, or the word true/false in any case (as a spec string gives it).

    Raises:
        RewardError: any other value (``bool("false")`` would be True).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise RewardError(f"reward term {name!r}: normalize= must be true or false, got {value!r}")


def _term_clip(name: str, value: Any) -> float | None:
    """Read a term's ``clip``: None (no clipping) or a number >= 0, the symmetric bound.

    Raises:
        RewardError: anything else (a word, a bool, a negative number, NaN).
    """
    if value is None:
        return None
    try:
        clip = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        clip = None
    if clip is None or not clip >= 0:
        raise RewardError(f"reward term {name!r}: clip= must be a number >= 0 (or None for no clipping), got {value!r}")
    return clip


def _term_timeout(name: str, value: Any) -> float | None:
    """Read a term's ``timeout``: None (the pipeline's default) or a number of seconds > 0.

    Raises:
        RewardError: anything else, naming the term.
    """
    if value is None:
        return None
    try:
        timeout = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        timeout = None
    if timeout is None or not timeout > 0 or math.isnan(timeout):
        raise RewardError(f"reward term {name!r}: timeout= must be a number of seconds > 0, got {value!r}")
    return timeout


def default_timeout(timeout: float | None = None) -> float | None:
    """The pipeline's default timeout: ``timeout`` if given, else ``$TEXTENV_REWARD_TIMEOUT`` (seconds), else None.

    Raises:
        RewardError: a timeout that is not a number > 0 (the environment variable's name is said).
    """
    if timeout is not None:
        return _term_timeout("(every term)", timeout)
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return None
    try:
        return _term_timeout("(every term)", text)
    except RewardError:
        raise RewardError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds > 0") from None


# ------------------------------------------------------------------------ pipeline


@dataclass
class RewardBatch:
    """The rewards of one batch of finished episodes.

    Attributes:
        total: (B,) the reward of each episode: weighted terms plus per-token rewards summed.
        terms: each term's weighted (and normalized) value by name, (B,) each; they sum to ``total``.
        raw_terms: each term's value as its source returned it (per-token sources: summed).
        token_rewards: per episode, the (T_i,) weighted per-token rewards of all per-token
            sources, or None when no source gives per-token rewards.
    """

    total: np.ndarray
    terms: dict[str, np.ndarray]
    raw_terms: dict[str, np.ndarray]
    token_rewards: list[np.ndarray] | None


@dataclass
class RewardTerm:
    """A term of the pipeline: a source bound to its options, weight and statistics."""

    key: str
    source: RewardSource
    spec: TermSpec
    call: Callable[[dict[str, Any]], Any]
    stats: RunningMeanStd = field(default_factory=RunningMeanStd)
    warned_slow: bool = False


class RewardPipeline:
    """Calls every reward source of a spec once per batch and combines the terms.

    Timeouts: a term's ``timeout=`` option, else the pipeline's ``timeout`` (``$TEXTENV_REWARD_TIMEOUT`` by
    default), else none. A source with a timeout runs in a worker thread (a daemon thread, with the
    caller's context variables and torch grad mode) while the caller waits; past the deadline
    :class:`RewardTimeout` names the source and the timeout. A thread cannot be killed: the late call
    is abandoned, still running, and its result is dropped if it ever comes. A source that must run on
    the caller's thread (one holding a ``sqlite3`` connection made there, say) should have no timeout.
    Without one a source runs on the caller's thread, as a plain call.

    A Ctrl-C that reaches a source's call, with or without a timeout, raises :class:`RewardInterrupted`
    naming it (a ``KeyboardInterrupt``). Under a handler that only notes a first Ctrl-C (PPO's ``learn``:
    finish the iteration, then stop), the call may go on :data:`INTERRUPT_GRACE_SECONDS` before it is
    interrupted, so a call that never returns does not hold the run (but a source that talks to a person,
    :attr:`RewardSource.interactive`, is left to that person). A call without a timeout that runs past
    :data:`SLOW_CALL_SECONDS` warns once per term, saying how to set one.

    Attributes:
        terms: the terms, in spec order.
        timeout: the default seconds per source call; None for no limit.
    """

    def __init__(self, terms: list[RewardTerm], timeout: float | None = None):
        if not terms:
            raise RewardError("a reward pipeline needs at least one term")
        self.terms = terms
        self.timeout = default_timeout(timeout)
        self._pending: _OpenBatch | None = None  # inside one_batch()

    @contextlib.contextmanager
    def one_batch(self, gather: Callable[[np.ndarray], np.ndarray] | None = None) -> Iterator[RewardPipeline]:
        """Score one batch in several calls with one set of normalization statistics.

        A rollout scores its rows as their episodes end, at different steps. Outside this
        context each call updates a normalized term's running statistics first, so short
        episodes would be normalized with older statistics than long ones. Inside it, every
        call normalizes with the statistics as of entry and keeps the raw values; on exit the
        statistics take them all in one update, as one call with the whole batch would.

        Fresh statistics (a term that has seen no value yet: mean 0, variance 1) would pass a
        first batch through nearly raw, so the batch's first call with values of such a term
        takes them in first (update, then normalize, as PPO's reward normalization does) and
        every later call of the batch uses those statistics. On exit the statistics start again
        from fresh and take in the whole batch, so they end the same as without that first step
        (and, with ``gather``, the same in every process, though each process's first batch was
        normalized with its own first values).

        A nested entry joins the outer batch. If the block raises, the kept values are
        dropped: a failed batch does not move the statistics.

        Args:
            gather: when a batch is scored in several processes, maps this process's raw values
                of a term to every process's (called once per normalized term, in term order, by
                every process), so that each process's statistics take in the whole batch.

        Example::

            with pipeline.one_batch():
                first = pipeline(prompts[:2], completions[:2], ids[:2], terminated[:2])
                rest = pipeline(prompts[2:], completions[2:], ids[2:], terminated[2:])
        """
        if self._pending is not None:
            yield self
            return
        self._pending = _OpenBatch({t.key: [] for t in self.terms if t.spec.normalize})
        try:
            yield self
        finally:
            pending, self._pending = self._pending, None
            for term in self.terms:  # the fresh statistics a first call moved, raised or not
                if term.key in pending.entry:
                    term.stats = pending.entry[term.key]
        for term in self.terms:  # reached only when the block did not raise
            if term.key not in pending.values:
                continue
            values = np.concatenate(pending.values[term.key]) if pending.values[term.key] else np.zeros(0)
            if gather is not None:
                values = gather(values)
            if len(values):
                term.stats.update(values)

    @classmethod
    def from_spec(cls, spec: Any, plugin_manager=None, *, timeout: float | None = None) -> RewardPipeline:
        """Build the pipeline for a reward spec (see :func:`parse_reward_spec`).

        Args:
            spec: the reward spec, or a ready pipeline (returned as is, its own timeout kept).
            plugin_manager: where to look sources up; the process default if None.
            timeout: seconds each source may take per call, for terms without ``timeout=``; None:
                ``$TEXTENV_REWARD_TIMEOUT`` if set, else no limit.
        """
        if isinstance(spec, RewardPipeline):
            return spec
        from textenv.plugin_manager import get_plugin_manager

        pm = plugin_manager or get_plugin_manager()
        terms: list[RewardTerm] = []
        for term_spec in parse_reward_spec(spec):
            if term_spec.fn is not None:
                source = function_source(term_spec.fn, term_spec.name)
            else:
                source = pm.get_reward_source(term_spec.name)
            processes = launched_processes()
            if source.interactive and processes > 1:
                raise RewardError(f"reward source {term_spec.name!r} talks to one person at one terminal, so it "
                                  f"runs in one process, and this launch started {processes} (WORLD_SIZE): "
                                  "train it without a launcher")
            key = term_spec.name
            while any(t.key == key for t in terms):
                key += "'"
            terms.append(RewardTerm(key, source, term_spec, source.bind(term_spec.options)))
        return cls(terms, timeout=timeout)

    @property
    def wants_tokens(self) -> bool:
        """Whether a source takes ``tokens`` (the env decodes them only then)."""
        return any(getattr(t.call, "wants_tokens", False) for t in self.terms)

    @property
    def names(self) -> list[str]:
        """The term keys, in spec order."""
        return [t.key for t in self.terms]

    @property
    def interactive(self) -> bool:
        """Whether a term's source talks to a person at the terminal (:attr:`RewardSource.interactive`)."""
        return any(t.source.interactive for t in self.terms)

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        completion_ids: list[list[int]],
        terminated: Sequence[bool],
        tokens: Sequence[Sequence[str]] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> RewardBatch:
        """Score a batch of finished episodes.

        ``tokens`` (each completion token decoded on its own) is needed only when
        :attr:`wants_tokens`; ``columns`` are the prompts' other dataset columns, one value per
        completion each, which reward functions get as keyword arguments.

        Raises:
            RewardError: a source raised, or returned the wrong type, shape or count, NaN or inf,
                or a value whose magnitude (weighted, normalized, clipped) is past
                :data:`MAX_ABS_REWARD`; the message names the source and the offending completion.
            RewardTimeout: a source did not return within its timeout.
            RewardInterrupted: Ctrl-C during a source's call.
        """
        context = {
            "prompts": list(prompts),
            "completions": list(completions),
            "completion_ids": [list(ids) for ids in completion_ids],
            "terminated": [bool(t) for t in terminated],
        }
        if tokens is not None:
            context["tokens"] = [list(t) for t in tokens]
        elif self.wants_tokens:
            raise RewardError("a reward source of this spec needs tokens= (each token decoded on its own)")
        n = len(context["completions"])
        for name, values in (columns or {}).items():
            if name in CONTEXT_ARGS or len(values) != n:
                raise RewardError(f"column {name!r}: a column has one value per completion ({n}), got {len(values)}"
                                  if name not in CONTEXT_ARGS else f"column {name!r} takes a context argument's name")
            context[name] = list(values)
        total = np.zeros(n, dtype=np.float64)
        terms, raw_terms = {}, {}
        token_rewards: list[np.ndarray] | None = None
        for term in self.terms:
            timeout = term.spec.timeout if term.spec.timeout is not None else self.timeout
            values = _call_source(term, context, timeout)
            episode, per_token, missing = _check_result(term.source.name, values, context)
            if per_token is None:
                raw_terms[term.key] = np.where(missing, np.nan, episode)
                weighted = term.spec.weight * _normalize_clip(term, episode, self._pending, ~missing)
                _check_magnitude(term, weighted, episode, context)
            else:
                raw_terms[term.key] = np.where(missing, np.nan, [t.sum() for t in per_token])
                applies = np.repeat(~missing, [len(t) for t in per_token])  # (sum T_i,)
                flat = _normalize_clip(term, np.concatenate(per_token), self._pending, applies) * term.spec.weight
                splits = np.cumsum([len(t) for t in per_token])[:-1]
                raw_rows, per_token = per_token, np.split(flat, splits)
                _check_magnitude(term, per_token, raw_rows, context)
                if token_rewards is None:
                    token_rewards = [np.zeros(len(t)) for t in per_token]
                token_rewards = [acc + t for acc, t in zip(token_rewards, per_token)]
                weighted = np.array([t.sum() for t in per_token])
            terms[term.key] = weighted
            total += weighted
        return RewardBatch(total, terms, raw_terms, token_rewards)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """The running normalization statistics, by term key (for checkpoints)."""
        return {
            t.key: {"mean": t.stats.mean.tolist(), "var": t.stats.var.tolist(), "count": t.stats.count}
            for t in self.terms
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for t in self.terms:
            if t.key in state:
                t.stats.mean = np.asarray(state[t.key]["mean"], dtype=np.float64)
                t.stats.var = np.asarray(state[t.key]["var"], dtype=np.float64)
                t.stats.count = float(state[t.key]["count"])


@dataclass
class _OpenBatch:
    """What :meth:`RewardPipeline.one_batch` keeps until its exit.

    Attributes:
        values: each normalized term's raw values so far, by key.
        entry: the fresh statistics of the terms whose first call took its values in, restored on exit.
    """

    values: dict[str, list[np.ndarray]]
    entry: dict[str, RunningMeanStd] = field(default_factory=dict)


def _is_fresh(stats: RunningMeanStd) -> bool:
    """Whether the statistics have taken in no value yet (their count is the initial epsilon, below 1)."""
    return stats.count < 1


def _normalize_clip(
    term: RewardTerm, values: np.ndarray, pending: _OpenBatch | None, applies: np.ndarray
) -> np.ndarray:
    """Normalize (when the term asks) and clip; 0 where the source does not apply (``applies`` False, left out of
    the statistics). ``pending`` keeps the raw values instead of updating the statistics (but for a first call on
    fresh statistics, see :meth:`RewardPipeline.one_batch`)."""
    seen = values[applies]
    if term.spec.normalize and len(seen):
        if pending is None:
            term.stats.update(seen)
        else:
            if _is_fresh(term.stats) and term.key not in pending.entry:
                pending.entry[term.key] = copy.deepcopy(term.stats)
                term.stats.update(seen)
            pending.values[term.key].append(seen)
        values = (values - term.stats.mean) / np.sqrt(term.stats.var + 1e-8)
    if term.spec.clip is not None:
        values = np.clip(values, -term.spec.clip, term.spec.clip)
    return np.where(applies, values, 0.0)


def _call_source(term: RewardTerm, context: dict[str, Any], timeout: float | None = None) -> Any:
    """The source's result for the batch; any failure becomes an error that names the source."""
    start = time.monotonic()
    try:
        with _watched(term, len(context["completions"]), timeout):
            return _call(term, context, timeout)
    except RewardTimeout:
        raise
    except KeyboardInterrupt:
        raise RewardInterrupted(
            f"Ctrl-C while reward source {term.source.name!r} ({term.source.origin or 'unknown origin'}) "
            f"was scoring {len(context['completions'])} completion(s), after {time.monotonic() - start:.1f} s"
        ) from None
    except Exception as exc:
        culprit = _find_failing_item(term, context, timeout)
        where = f" on completion {culprit}" if culprit is not None else ""
        raise RewardError(
            f"reward source {term.source.name!r} ({term.source.origin or 'unknown origin'}) "
            f"raised {type(exc).__name__}: {exc}{where}"
        ) from exc


def _call(term: RewardTerm, context: dict[str, Any], timeout: float | None) -> Any:
    """``term.call(context)``; with a timeout, in a daemon thread that is abandoned at the deadline.

    Raises:
        RewardTimeout: the deadline passed first.
    """
    if timeout is None:
        return term.call(context)
    outcome: dict[str, Any] = {}
    grad = sys.modules["torch"].is_grad_enabled() if "torch" in sys.modules else None
    run_in_context = contextvars.copy_context().run

    def work() -> None:
        try:
            if grad is None:
                outcome["value"] = run_in_context(term.call, context)
            else:
                with sys.modules["torch"].set_grad_enabled(grad):
                    outcome["value"] = run_in_context(term.call, context)
        except BaseException as exc:  # noqa: BLE001  (handed to the caller's thread)
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"textenv reward source {term.source.name}", daemon=True)
    worker.start()
    worker.join(timeout)  # a Ctrl-C interrupts the wait (KeyboardInterrupt in this thread)
    if worker.is_alive():
        raise RewardTimeout(
            f"reward source {term.source.name!r} ({term.source.origin or 'unknown origin'}) did not return within "
            f"its timeout of {timeout:g} s on {len(context['completions'])} completion(s); the call is abandoned "
            f"(timeout= in the reward spec, or the pipeline's reward_timeout / ${TIMEOUT_ENV}, sets it)"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextlib.contextmanager
def _watched(term: RewardTerm, n: int, timeout: float | None) -> Iterator[None]:
    """A source's call, warned about once when slow, interruptible by a first Ctrl-C (see :class:`RewardPipeline`)."""
    if term.source.interactive:  # a person takes their time, and their Ctrl-C is theirs to handle
        yield
        return
    slow = None
    if timeout is None and not term.warned_slow:
        slow = threading.Timer(SLOW_CALL_SECONDS, _warn_slow, (term, n))
        slow.daemon = True
        slow.start()
    try:
        with _first_ctrl_c_interrupts():
            yield
    finally:
        if slow is not None:
            slow.cancel()


def _warn_slow(term: RewardTerm, n: int) -> None:
    """One warning per term (from a timer thread while the call runs): how to stop it and how to bound it."""
    if term.warned_slow:
        return
    term.warned_slow = True
    warnings.warn(
        f"reward source {term.source.name!r} ({term.source.origin or 'unknown origin'}) has been scoring {n} "
        f"completion(s) for {SLOW_CALL_SECONDS:g} s; if it hangs, Ctrl-C stops it, and a timeout bounds each call: "
        f"{term.key}(timeout=SECONDS) in the reward spec, or reward_timeout= (${TIMEOUT_ENV}) for every term",
        stacklevel=1,
    )


@contextlib.contextmanager
def _first_ctrl_c_interrupts() -> Iterator[None]:
    """While a source scores on the main thread: a first Ctrl-C goes to the installed handler as ever, and if the
    call has not returned :data:`INTERRUPT_GRACE_SECONDS` later, a second, our own, raises ``KeyboardInterrupt``.

    Nothing changes off the main thread (signals reach only it), nor where the handler is Python's default (a
    Ctrl-C raises at once) or the signal is ignored.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous) \
            or previous is signal.default_int_handler:
        yield
        return
    lock = threading.Lock()
    state = {"active": True, "expired": False, "timer": None}

    def expire() -> None:
        with lock:  # never after the call has returned: the SIGINT would read as the user's second Ctrl-C
            if state["active"]:
                state["expired"] = True
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if state["expired"]:
            if state["active"]:
                raise KeyboardInterrupt
            return  # ours, arriving after the call returned: not the user's
        previous(signum, frame)  # notes it (or raises, on a second Ctrl-C)
        if state["active"] and state["timer"] is None:
            state["timer"] = threading.Timer(INTERRUPT_GRACE_SECONDS, expire)
            state["timer"].daemon = True
            state["timer"].start()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        try:
            with lock:
                state["active"] = False
        finally:  # even where our own late Ctrl-C raised just above
            if state["timer"] is not None:
                state["timer"].cancel()
            _restore_sigint(previous)


def _restore_sigint(previous: Any) -> None:
    """Put the handler back; a Ctrl-C pending meanwhile is handled first (``signal.signal`` does), and re-raised."""
    interrupted = None
    for _ in range(3):
        try:
            signal.signal(signal.SIGINT, previous)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def _find_failing_item(term: RewardTerm, context: dict[str, Any], timeout: float | None = None) -> str | None:
    """Call the source on one item at a time to name the first one that raises."""
    for i in range(len(context["completions"])):
        single = {k: v[i : i + 1] for k, v in context.items()}
        try:
            _call(term, single, timeout)
        except RewardTimeout:
            return None
        except Exception:
            return _describe_item(i, context)
    return None


def _describe_item(i: int, context: dict[str, Any]) -> str:
    text = context["completions"][i]
    shown = text if len(text) <= 60 else text[:57] + "..."
    return f"#{i} {shown!r}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_numpy(value: Any) -> Any:
    """A torch tensor as a numpy array (float32 first, as bf16 has no numpy type); anything else as it is."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return value


def _is_number(value: Any) -> bool:
    """A Python or numpy number (bool included), or a 0-d array of one."""
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return True
    return getattr(value, "ndim", None) == 0 and _as_numpy(value).dtype.kind in "biuf"


def _is_row(value: Any) -> bool:
    """One completion's per-token rewards: a 1-D numeric array, or a list/tuple of numbers."""
    value = _as_numpy(value)
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "biuf"
    return isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)


def _check_result(
    name: str, values: Any, context: dict[str, Any]
) -> tuple[np.ndarray, list[np.ndarray] | None, np.ndarray]:
    """Return (episode values, None, missing) or (zeros, per-token arrays, missing), or raise naming the source.

    Accepted: a sequence or 1-D array of ``n`` numbers (one per completion), or a sequence of ``n``
    rows, each a list or 1-D array with one number per token of that completion; None in place of a
    number or a row: the source does not apply to that completion (``missing`` (n,) is True there, and
    its value 0, or a row of zeros). Refused, each said in one line: a dict, a string, a scalar, an array
    of another shape (an (n, 1) array too, even where every completion has one token), strings or nested
    lists among the values, floats mixed with rows.
    """
    n = len(context["completions"])
    expected = f"a list of {n} floats (one per completion), or of {n} lists with one float per token"
    values = _as_numpy(values)
    if isinstance(values, np.ndarray) and (values.ndim != 1 or values.dtype.kind not in "biuf"):
        raise RewardError(
            f"reward source {name!r} returned an array of shape {values.shape} and dtype {values.dtype}; "
            f"expected shape ({n},), one number per completion (per-token rewards: a list of {n} 1-D arrays)"
        )
    if values is None or isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__") \
            or not hasattr(values, "__getitem__"):
        raise RewardError(
            f"reward source {name!r} must return a sequence of {n} floats (or of {n} per-token lists), "
            f"got {type(values).__name__} {_short(values)}"
        )
    if len(values) != n:
        raise RewardError(f"reward source {name!r} returned {len(values)} values for {n} completions")
    if n == 0:
        return np.zeros(0), None, np.zeros(0, dtype=bool)
    missing = np.array([v is None for v in values], dtype=bool)
    numbers = [_is_number(v) for v in values]
    if all(is_number or absent for is_number, absent in zip(numbers, missing)):
        episode = np.array([0.0 if absent else float(_as_numpy(v)) for v, absent in zip(values, missing)])
        _check_finite(name, episode, context)
        return episode, None, missing
    for i, value in enumerate(values):
        if not numbers[i] and not missing[i] and not _is_row(value):
            raise RewardError(
                f"reward source {name!r} returned {_short(value)} for completion {_describe_item(i, context)}, "
                f"a {type(value).__name__}; expected {expected}"
            )
    if any(numbers):
        i = numbers.index(True)
        j = next(k for k, (is_number, absent) in enumerate(zip(numbers, missing)) if not (is_number or absent))
        raise RewardError(
            f"reward source {name!r} returned a float for completion {_describe_item(i, context)} and a list for "
            f"completion {_describe_item(j, context)}; expected {expected}, the same kind for every completion"
        )
    per_token = []
    for i, row in enumerate(values):
        expected_len = len(context["completion_ids"][i])
        row = np.zeros(expected_len) if missing[i] else np.asarray(_as_numpy(row), dtype=np.float64)
        if len(row) != expected_len:
            raise RewardError(
                f"reward source {name!r} returned {len(row)} per-token rewards for completion "
                f"{_describe_item(i, context)}, which has {expected_len} tokens"
            )
        bad = ~np.isfinite(row)
        if bad.any():
            raise RewardError(
                f"reward source {name!r} returned {row[bad][0]} at token {int(np.argmax(bad))} "
                f"of completion {_describe_item(i, context)}"
            )
        per_token.append(row)
    return np.zeros(n), per_token, missing


def _check_finite(name: str, values: np.ndarray, context: dict[str, Any]) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        i = int(bad[0])
        raise RewardError(
            f"reward source {name!r} returned {values[i]} for completion {_describe_item(i, context)}"
        )


def _check_magnitude(term: RewardTerm, weighted: np.ndarray | list[np.ndarray], raw: np.ndarray | list[np.ndarray],
                     context: dict[str, Any]) -> None:
    """Refuse a term value past :data:`MAX_ABS_REWARD` (after weight, normalization, clipping), naming the source.

    Args:
        weighted: what enters the loss: (n,) values, or a list of one (T_i,) array per completion.
        raw: the source's values, in the same layout.
    """
    rows = weighted if isinstance(weighted, list) else [weighted]
    for r, row in enumerate(rows):
        bad = np.flatnonzero(np.abs(row) > MAX_ABS_REWARD)
        if not len(bad):
            continue
        k = int(bad[0])
        i, value, where = (r, raw[r][k], f"at token {k} of") if isinstance(weighted, list) else (k, raw[k], "for")
        scaled = "" if value == row[k] else f" ({row[k]:.4g} weighted, normalized and clipped)"
        raise RewardError(
            f"reward source {term.source.name!r} ({term.source.origin or 'unknown origin'}) returned {value:.4g} "
            f"{where} completion {_describe_item(i, context)}{scaled}: a term past ±{MAX_ABS_REWARD:g} would make "
            f"the PPO loss overflow; scale it with a weight (0.001*{term.key}), normalize=true or clip="
        )
