"""The README's Python examples run as written (given the names they leave to the reader)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dawin_fast import use_backend

README = Path(__file__).resolve().parents[2] / "README.md"
#: Documentation pages whose Python blocks run here too.
DOC_PAGES = [Path(__file__).resolve().parents[2] / "docs" / "language-models.md"]


def python_blocks(path: Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


class TinyTokenizer:
    """Stands in for a Hugging Face tokenizer padding on the left (nothing downloaded)."""

    padding_side = "left"

    def __call__(self, prompts, return_tensors="pt", padding=True):
        from tests.lm_models import left_padded_prompts

        ids, mask = left_padded_prompts(batch=len(prompts))
        return {"input_ids": ids, "attention_mask": mask}

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(map(str, row.tolist())) for row in ids]


def prelude(block: str) -> dict:
    """The free names a block leaves to the reader, made small and concrete."""
    torch.manual_seed(0)
    names: dict = {"torch": torch}
    if "lin_zero_shot" in block:
        names.update(lin_zero_shot=nn.Linear(8, 6), lin_fine_tuned=nn.Linear(8, 6),
                     x=torch.randn(12, 8))
    if "zero_shot_head" in block:
        names.update(zero_shot_head=torch.randn(10, 512), fine_tuned_head=nn.Linear(512, 10),
                     images=torch.randn(4, 3, 224, 224), rows=torch.rand(4, 2).softmax(1),
                     table=torch.tensor([[0.7, 0.3], [0.2, 0.8]]),
                     labels=torch.tensor([0, 1, 1, 0]),
                     # a plain DataLoader of (images, labels) pairs
                     calibration_loader=DataLoader(TensorDataset(torch.randn(4, 3, 224, 224),
                                                                 torch.arange(4)),
                                                   batch_size=2))
    if "zero_shot(images)" in block:
        models = [nn.Sequential(nn.Flatten(), nn.Linear(12, 5)) for _ in range(2)]
        names.update(zero_shot=models[0], fine_tuned=models[1], images=torch.randn(8, 3, 2, 2))
    if "my_coefficient_rows" in block:
        names.update(my_coefficient_rows=torch.tensor([[0.5, 0.5], [0.1, 0.9], [0.5, 0.5]]),
                     batch_tokens=torch.randn(3, 4, 8), stacked_w=torch.randn(2, 6, 8),
                     stacked_b=torch.randn(2, 6))
    if "distributed.shard(dataset" in block:  # Scaling out: one process, no group
        from dawin_fast import DaWin, DaWinClassifier, DaWinViT
        from tests.models import tiny_open_clip_visual

        visuals = [tiny_open_clip_visual(s) for s in (0, 1)]
        heads = [torch.randn(5, 12), torch.randn(5, 12)]
        names.update(dawin=DaWin(DaWinClassifier(DaWinViT.from_open_clip(visuals), heads)),
                     dataset=torch.utils.data.TensorDataset(torch.randn(10, 3, 16, 16),
                                                            torch.zeros(10, dtype=torch.long)))
    if "llama_math" in block:  # Language models: three tiny random Llamas
        pytest.importorskip("transformers")
        from tests.lm_models import tiny_causal_lm

        names.update(zip(("llama_math", "llama_code", "llama_chat"),
                         (tiny_causal_lm("llama", seed) for seed in range(3)), strict=True),
                     tokenizer=TinyTokenizer())
    if "interp_linear(x, weight, coeffs, offsets" in block:
        names.update(x=torch.randn(5, 8), weight=torch.randn(2, 6, 8),
                     coeffs=torch.tensor([[1.0, 0.0]]), offsets=torch.tensor([0, 5]))
    return names


BLOCKS = python_blocks()


DOC_BLOCKS = [(page.name, i, block) for page in DOC_PAGES
              for i, block in enumerate(python_blocks(page))]


def test_readme_has_examples():
    assert len(BLOCKS) >= 5
    assert DOC_BLOCKS, "the documentation pages have no Python example"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    block = BLOCKS[index]
    namespace = prelude(block)
    with use_backend("torch"), torch.no_grad():
        exec(compile(block, f"README.md block {index}", "exec"), namespace)


@pytest.mark.parametrize("page, index, block", DOC_BLOCKS,
                         ids=[f"{p}-{i}" for p, i, _ in DOC_BLOCKS])
def test_doc_page_example_runs(page, index, block):
    """A page's block runs here, unless the README holds it character for character
    (then test_readme_example_runs runs it; running it twice would only cost time)."""
    if block in BLOCKS:
        pytest.skip(f"identical to README block {BLOCKS.index(block)}, which runs it")
    namespace = prelude(block)
    with use_backend("torch"), torch.no_grad():
        exec(compile(block, f"docs/{page} block {index}", "exec"), namespace)
