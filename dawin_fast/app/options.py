"""argparse types for the command line: each value is checked as it is parsed.

A bad value becomes argparse's own one-line usage error (``argument --clusters: ...``,
exit code 2) before anything loads. Checks that need more than one argument, or the files,
run in the commands' ``prepare`` step, still before any model is built.
"""

from __future__ import annotations

import argparse
import math
import os
import re

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def positive_int(value: str) -> int:
    """An integer >= 1."""
    number = _int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """An integer >= 0."""
    number = _int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def seed(value: str) -> int:
    """An integer in [0, 2**63): what both torch's and NumPy's generators take."""
    number = _int(value)
    if not 0 <= number < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {value!r}")
    return number


def unit_float(value: str) -> float:
    """A number in [0, 1] (NaN and infinities rejected)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:  # also false for NaN
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    return number


def positive_seconds(value: str) -> float:
    """A finite number of seconds > 0."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value!r}")
    return number


def temperatures(value: str) -> tuple[float, ...]:
    """"0.96,1.0066" (finite, > 0), or an open_clip name of the paper's ("ViT-B-16")."""
    from ..algorithm.coefficients import TEMPERATURES

    if value in TEMPERATURES:
        return TEMPERATURES[value]
    expected = (f"expected comma-separated numbers > 0 (one per model) or one of "
                f"{', '.join(sorted(TEMPERATURES))}")
    try:
        temps = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {value!r}") from None
    if not all(math.isfinite(t) and t > 0 for t in temps):
        raise argparse.ArgumentTypeError(f"{expected}, got {value!r}")
    return temps


def epochs(value: str) -> tuple[int, int]:
    """"GENERAL,FINETUNED": two integers >= 1 (the demo's training epochs)."""
    parts = value.split(",")
    try:
        numbers = tuple(int(v) for v in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != 2 or min(numbers) < 1:
        raise argparse.ArgumentTypeError(
            f"expected two integers >= 1 as GENERAL,FINETUNED (e.g. 40,25), got {value!r}")
    return numbers


def device(value: str) -> str:
    """cpu, cuda or cuda:N, available on this machine."""
    expected = "expected cpu, cuda or cuda:N"
    try:
        parsed = torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{expected}, got {value!r}") from None
    if parsed.type == "cpu":
        return "cpu"
    if parsed.type != "cuda":
        raise argparse.ArgumentTypeError(
            f"{expected}, got {value!r} (dawin_fast runs on CPUs and NVIDIA GPUs)")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"device {value!r} requested but CUDA is not available on this machine; use cpu")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise argparse.ArgumentTypeError(
            f"device {value!r} requested but this machine has {count} CUDA device(s)")
    return value


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


CACHE_ENV = "DAWIN_FAST_CACHE"


def default_cache_dir() -> str:
    """``$DAWIN_FAST_CACHE``, else ``$XDG_CACHE_HOME/dawin_fast`` (``~/.cache/dawin_fast``)."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dawin_fast")


def data_spec(value: str):
    """"NAME=PATH" (NAME: a word, e.g. imagenet-r), or a bare PATH named by its last part."""
    from .datasets import DataSpec

    name, sep, path = value.partition("=")
    if sep and re.fullmatch(r"[\w.+-]+", name):
        if not path:
            raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}")
        return DataSpec(name, path)
    return DataSpec(os.path.basename(os.path.normpath(value)) or value, value)
