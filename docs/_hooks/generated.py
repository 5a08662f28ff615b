"""MkDocs hook: pages generated at build time from files kept elsewhere in the repository.

performance.md renders benchmarks/RESULTS.md (itself written by benchmarks/render.py),
kernel-strategies.md renders kernels/README.md and tuning-log.md kernels/TUNING_LOG.md, so
none of these pages is ever written by hand nor stale. tests/docs/test_site.py checks the
generated text against its source.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]

# page -> (source, the line put under the source's title)
GENERATED = {
    "performance.md": ("benchmarks/RESULTS.md",
                       "How to run the benchmarks: [Kernels and strategies]"
                       "(kernels.md#benchmarks)."),
    "kernel-strategies.md": ("kernels/README.md",
                             "Each strategy now: what it is, when it wins, what is predicted "
                             "or measured, its compile-gate status; the overview is in "
                             "[Kernels and strategies](kernels.md), the design facts in "
                             "[Design](design.md)."),
    "tuning-log.md": ("kernels/TUNING_LOG.md",
                      "The dated record behind [Kernel strategies](kernel-strategies.md): "
                      "each prediction, change and outcome as written at the time."),
}


def page_text(page: str, root: Path = ROOT) -> str:
    """The markdown of a generated page: its source's text, with a note under the title."""
    source, note = GENERATED[page]
    text = (root / source).read_text(encoding="utf-8")
    title, _, rest = text.partition("\n")
    if not title.startswith("# "):
        raise ValueError(f"{source}: expected a '# ' title on the first line, got {title!r}")
    banner = (f"!!! note \"Generated\"\n    This page is generated from `{source}` when the "
              f"site is built; edit that file, not this page. {note}\n")
    return f"{title}\n\n{banner}{rest}"


def on_files(files: Files, config) -> Files:
    for page in GENERATED:
        if files.get_file_from_path(page) is not None:
            raise ValueError(f"docs/{page} is generated: delete the hand-written copy")
        files.append(File.generated(config, page, content=page_text(page)))
    return files
