"""The kernel strategies, one ``Strategy`` value each, registered by name.

Each strategy lives in one module of ``kernels/strategies/`` and states everything the
rest of the library asks of it: how to launch a plan, its configs and their shared-memory
fit, the cost model's prediction per config (strategies without one autotune), whether
the measured dispatch may time a config on a target, which implementation runs (the
Gluon kernel or its plain-Triton twin), and the compile gate's variants. The planner
(``planning``, ``dispatch``), ``kernel_choice``, the measured dispatch's candidates and
the compile gate (``compile_variants`` below) walk this registry.

Registering (or removing) a strategy drops every cached decision (``on_change``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any


def _always(*args: Any) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One strategy of ``interp_matmul``'s contract.

    ``launch(plan, x, weight, coeffs, offsets, bias, y) -> y`` runs a plan of this
    strategy. With ``predict`` (``cost_model.Case``, config name -> seconds) the traffic
    model ranks its ``configs`` against the other predicted strategies; without, Triton
    autotunes its configs and ``autotune_fits(call)`` says whether any fits the device.
    """

    name: str
    summary: str  #: one line: what it is (the docs' strategy table)
    launch: Callable[..., Any]
    configs: tuple[str, ...] = ()
    predict: Callable[[Any, str], float] | None = None
    #: (config, K) -> whether the config can run this K at all (a resident tile's fit).
    fits_k: Callable[[str, int], bool] = _always
    #: (config, dtype, shared-memory limit) -> whether the config fits the device.
    fits_device: Callable[[str, Any, int], bool] = _always
    #: (config, target, dtype) -> whether the measured dispatch may time it there.
    measurable: Callable[[str, Any, Any], bool] = _always
    #: The config of a forced call where no config fits (None: such a call raises).
    fallback: Callable[[], str] | None = None
    #: Autotuned strategies: (call) -> whether a config fits the call's device.
    autotune_fits: Callable[[Any], bool] = _always
    #: (plan) -> the implementation that runs ("Gluon", "twin"), or None for the only one.
    implementation: Callable[[Any], str | None] = lambda plan: None
    #: The compile gate's providers: generators of ``gate_spec.Variant``.
    compile_variants: tuple[Callable[[], Iterator[Any]], ...] = ()

    @property
    def modeled(self) -> bool:
        """Whether the cost model ranks its configs (else Triton autotunes them)."""
        return self.predict is not None


_strategies: dict[str, Strategy] = {}
#: Called after every change of the registry (cached rankings and plans are dropped).
on_change: list[Callable[[], None]] = []


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy`` (a name registered before is replaced, keeping its place)."""
    _strategies[strategy.name] = strategy
    _changed()
    return strategy


def unregister(name: str) -> None:
    """Remove a strategy (tests that register their own)."""
    _strategies.pop(name, None)
    _changed()


def _changed() -> None:
    for hook in on_change:
        hook()


def get(name: str) -> Strategy:
    try:
        return _strategies[name]
    except KeyError:
        raise ValueError(f"strategy must be one of {names()}, got {name!r}") from None


def names() -> tuple[str, ...]:
    return tuple(_strategies)


def strategies() -> tuple[Strategy, ...]:
    return tuple(_strategies.values())


def modeled() -> tuple[Strategy, ...]:
    """The strategies the cost model ranks, in registration order."""
    return tuple(s for s in _strategies.values() if s.modeled)


def autotuned() -> tuple[Strategy, ...]:
    """The strategies Triton autotunes (no cost model), in registration order."""
    return tuple(s for s in _strategies.values() if not s.modeled)


def compile_variants() -> Iterator[Any]:
    """Every strategy's compile-gate variants, each provider once, in the order of the
    providers' module names (a stable table)."""
    providers: list[Callable[[], Iterator[Any]]] = []
    for strategy in _strategies.values():
        providers += [p for p in strategy.compile_variants if p not in providers]
    for provider in sorted(providers, key=lambda p: p.__module__):
        yield from provider()
