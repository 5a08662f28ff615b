"""Setups of the documentation's examples: the free names a block leaves to the reader.

A block preceded by ``<!-- example: setup=NAME -->`` runs in the namespace ``SETUPS[NAME]()``
returns (see docs/development.md, "Examples run as tests"). Small, seeded, offline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def linears() -> dict:
    """getting-started / README quickstart: two nn.Linear(8, 6) and a [12, 8] input."""
    return dict(lin_zero_shot=nn.Linear(8, 6), lin_fine_tuned=nn.Linear(8, 6),
                x=torch.randn(12, 8))


def vit_inputs() -> dict:
    """vision: heads for ViT-B/32's 512 features (one tensor, one nn.Linear), 4 images."""
    return dict(zero_shot_head=torch.randn(10, 512), fine_tuned_head=nn.Linear(512, 10),
                images=torch.randn(4, 3, 224, 224), rows=torch.rand(4, 2).softmax(1),
                table=torch.tensor([[0.7, 0.3], [0.2, 0.8]]), labels=torch.tensor([0, 1, 1, 0]),
                # a plain DataLoader of (images, labels) pairs
                calibration_loader=DataLoader(TensorDataset(torch.randn(4, 3, 224, 224),
                                                            torch.arange(4)), batch_size=2))


def experts() -> dict:
    """concepts: two tiny classifiers (5 classes) and 8 images of 3x2x2."""
    models = [nn.Sequential(nn.Flatten(), nn.Linear(12, 5)) for _ in range(2)]
    return dict(zero_shot=models[0], fine_tuned=models[1], images=torch.randn(8, 3, 2, 2))


def op_arguments() -> dict:
    """concepts, the op: 5 rows of K=8, M=2 models of N=6, one group."""
    return dict(x=torch.randn(5, 8), weight=torch.randn(2, 6, 8),
                coeffs=torch.tensor([[1.0, 0.0]]), offsets=torch.tensor([0, 5]))


def foreign_rows() -> dict:
    """concepts, another framework's loop: 3 samples of 4 tokens, two distinct rows."""
    return dict(my_coefficient_rows=torch.tensor([[0.5, 0.5], [0.1, 0.9], [0.5, 0.5]]),
                batch_tokens=torch.randn(3, 4, 8), stacked_w=torch.randn(2, 6, 8),
                stacked_b=torch.randn(2, 6))


def shard() -> dict:
    """scaling-out: a DaWin over two tiny open_clip towers, 10 images; no process group."""
    from dawin_fast import DaWin, DaWinClassifier, DaWinViT
    from tests.models import tiny_open_clip_visual

    visuals = [tiny_open_clip_visual(s) for s in (0, 1)]
    heads = [torch.randn(5, 12), torch.randn(5, 12)]
    return dict(dawin=DaWin(DaWinClassifier(DaWinViT.from_open_clip(visuals), heads)),
                dataset=TensorDataset(torch.randn(10, 3, 16, 16),
                                      torch.zeros(10, dtype=torch.long)))


def task_vectors_clip() -> dict:
    """trained-coefficients: a tiny Hugging Face CLIP tower (8 layers, 16 features) as base and
    two task vectors, gates that require grad, 4 images in 2 clusters, a 5-class head."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from tests.models import perturb

    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=8,
                              num_attention_heads=2, image_size=8, patch_size=4)
    towers = []
    for seed in range(3):
        torch.manual_seed(0)
        towers.append(perturb(CLIPVisionModel(config), seed, scale=0.2))
    images = torch.randn(4, 3, 8, 8)
    gate_net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    return dict(base=towers[0], tau_1=towers[1], tau_2=towers[2], images=images,
                gate=gate_net, table=torch.rand(2, 3, requires_grad=True),
                labels=torch.tensor([0, 1, 1, 0]),
                row=torch.tensor([1.0, 0.3, 0.3], requires_grad=True),
                layer_row=torch.tensor([1.0, 0.5, 0.2], requires_grad=True),
                per_sample_rows=torch.rand(4, 3, requires_grad=True),
                g=nn.Linear(32, 3),  # a gate on fc2's input [B, L, 32]
                head=torch.randn(5, 16))  # a [C, D] head on the pooled features


class TinyTokenizer:
    """Stands in for a Hugging Face tokenizer padding on the left (nothing downloaded)."""

    padding_side = "left"

    def __call__(self, prompts, return_tensors="pt", padding=True):
        from tests.lm_models import left_padded_prompts

        ids, mask = left_padded_prompts(batch=len(prompts))
        return {"input_ids": ids, "attention_mask": mask}

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(map(str, row.tolist())) for row in ids]


def llama_lms() -> dict:
    """language-models: three tiny random Llamas (2 layers, seeded) and a tokenizer."""
    from tests.lm_models import tiny_causal_lm

    models = (tiny_causal_lm("llama", seed) for seed in range(3))
    return dict(zip(("llama_math", "llama_code", "llama_chat"), models, strict=True),
                tokenizer=TinyTokenizer())


def robust_ft_checkpoints() -> dict:
    """reproduce-the-paper: a tiny CLIP (QuickGELU) saved as an open_clip state dict
    (zero-shot) and as a model-soups checkpoint with a 3-class head (fine-tuned), its class
    names and one template, 4 images."""
    import tempfile
    from pathlib import Path

    from tests.app.paper_files import make_models

    root = Path(tempfile.mkdtemp(prefix="dawin-docs-"))
    models = make_models(root)
    soup = torch.load(root / "ft_soup.pt", weights_only=True)
    soup["classification_head.weight"] = models["ft_head"]["weight"][:3].clone()
    soup["classification_head.bias"] = models["ft_head"]["bias"][:3].clone()
    torch.save(soup, root / "ft_soup.pt")
    return dict(arch_name="tiny-clip", zs_path=str(root / "zs.pt"),
                ft_path=str(root / "ft_soup.pt"), class_names=["cat", "dog", "eel"],
                templates=["a photo of a {}."], images=torch.randn(4, 3, 16, 16))


SETUPS: dict[str, Callable[[], dict]] = {
    f.__name__: f for f in (linears, vit_inputs, experts, op_arguments, foreign_rows, shard,
                            task_vectors_clip, llama_lms, robust_ft_checkpoints)
}
