"""The site's structure: the nav names every page, and the generated pages render their
sources (benchmarks/RESULTS.md, kernels/README.md, kernels/TUNING_LOG.md) whole. CI builds
the site itself (`mkdocs build --strict` in .ci/run)."""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.docs.examples import ROOT

pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")


def hook():
    spec = importlib.util.spec_from_file_location("generated", ROOT / "docs/_hooks/generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:"):]
    return re.findall(r"^\s*- [^:]+: (\S+\.md)\s*$", nav, re.M)


@pytest.mark.parametrize("page", ["performance.md", "kernel-strategies.md", "tuning-log.md"])
def test_generated_page_is_its_source(page):
    generated = hook()
    source = (ROOT / generated.GENERATED[page][0]).read_text(encoding="utf-8")
    text = generated.page_text(page)
    title, _, body = source.partition("\n")
    assert text.startswith(title + "\n")
    assert text.endswith(body) and len(body) > 200  # the whole source, after the note
    assert generated.GENERATED[page][0] in text.split(body)[0]  # the note names the source
    assert not (ROOT / "docs" / page).exists(), f"docs/{page} is generated, never written"


def test_generated_page_follows_its_source(tmp_path):
    """A change to RESULTS.md shows on the page (nothing is copied by hand)."""
    generated = hook()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks/RESULTS.md").write_text("# Results\n\n| a |\n|---|\n| 1.07× |\n")
    text = generated.page_text("performance.md", root=tmp_path)
    assert text.startswith("# Results\n") and text.endswith("| 1.07× |\n")
    (tmp_path / "benchmarks/RESULTS.md").write_text("no title\n")
    with pytest.raises(ValueError, match="title"):
        generated.page_text("performance.md", root=tmp_path)


def test_nav_lists_every_page():
    pages = nav_pages()
    written = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    generated = sorted(hook().GENERATED)
    assert sorted(pages) == sorted(written + generated)
    assert len(pages) == len(set(pages))


def api_entries() -> list[str]:
    text = (ROOT / "docs/api.md").read_text(encoding="utf-8")
    return re.findall(r"^::: (\S+)\s*$", text, re.M)


def test_api_reference_covers_the_public_api():
    """Every name of dawin_fast.__all__ and dawin_fast.nn.__all__ has an entry (under either
    path), and every entry that is a module, class or function has a docstring to render."""
    import importlib
    import inspect

    import dawin_fast
    import dawin_fast.nn

    entries = api_entries()
    short = {entry.rsplit(".", 1)[-1] for entry in entries}
    missing = [name for module in (dawin_fast, dawin_fast.nn) for name in module.__all__
               if name not in short]
    assert missing == [], f"docs/api.md lacks {missing}"
    for entry in entries:
        module, _, name = entry.rpartition(".")
        obj = getattr(importlib.import_module(module), name, None) if module else None
        if obj is None:
            obj = importlib.import_module(entry)
        if inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj):
            assert obj.__doc__ and obj.__doc__.strip(), f"{entry} has no docstring"
