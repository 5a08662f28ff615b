"""The README's Python examples run as written (given the names they leave to the reader:
data and heads, never stand-ins for the models a block builds)."""

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
    if "dawinize([base, tau_1, tau_2])" in block:  # trained coefficients: tiny HF CLIPs
        from dawin_fast import task_vectors
        from dawin_fast.integrations.fusion_bench.tiny import tiny_clip_vision_model

        models = [tiny_clip_vision_model(s, num_hidden_layers=8, noise=0.05) for s in range(3)]
        for model in models:  # the final LayerNorm equal in every model (fine-tunes barely
            ln = model.vision_model.post_layernorm if hasattr(model, "vision_model") \
                else model.post_layernorm  # move it): the sum of its output is a constant
            nn.init.ones_(ln.weight)
            nn.init.zeros_(ln.bias)
        _, tau_1, tau_2 = task_vectors(models[0], models[1:])
        gate = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
        names.update(base=models[0], tau_1=tau_1, tau_2=tau_2, gate=gate,
                     images=torch.randn(4, 3, 16, 16), head=torch.randn(5, 32) / 32**0.5,
                     table=torch.tensor([[1.0, 0.3, 0.3], [1.0, 0.6, 0.1]]),
                     labels=torch.tensor([0, 1, 1, 0]), row=torch.tensor([1.0, 0.3, 0.3]),
                     layer_row=torch.tensor([1.0, 0.5, 0.5]),
                     per_sample_rows=torch.rand(4, 3), g=nn.Linear(64, 3))  # fc2 in: 64
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
    # Blocks that call backward() need autograd; the others run as inference.
    with use_backend("torch"), torch.set_grad_enabled("backward()" in block):
        exec(compile(block, f"README.md block {index}", "exec"), namespace)
    if "backward()" in block:  # the loss a user would train with: gradients of real size
        grads = [p.grad for p in namespace["gate"].parameters()]
        assert all(g is not None for g in grads)
        assert max(float(g.abs().max()) for g in grads) > 1e-3


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
