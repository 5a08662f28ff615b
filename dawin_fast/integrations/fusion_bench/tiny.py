"""A tiny random CLIP vision model pool and classification task pool, for offline runs.

``tiny_clip_vision_model(seed)`` builds a Hugging Face ``CLIPVisionModel`` from a small
config (no download): every model starts from the same random initialisation and moves
by seeded noise, like fine-tuned copies of one pretrained model. The pool config
``modelpool=dawin_fast/tiny_clip_vision`` uses it. ``tiny_heads(tasks)``: random heads
for it, for ``clip_dawin``'s ``method.heads`` (the tiny pool has no CLIP text model).

The task pool ``taskpool=dawin_fast/tiny_clip_classification`` is FusionBench's CLIP
classification task pool on ``tiny_classification_dataset`` (random images, a few class
names per task), ``tiny_clip_model`` (its zero-shot heads) and ``TinyCLIPProcessor``.
"""

from __future__ import annotations

import torch


def tiny_clip_vision_model(seed: int = 0, hidden_size: int = 32, intermediate_size: int = 64,
                           num_hidden_layers: int = 2, num_attention_heads: int = 4,
                           image_size: int = 16, patch_size: int = 4, noise: float = 0.02):
    """A random ``CLIPVisionModel`` (seed 0: the 'pretrained' one)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=intermediate_size,
                              num_hidden_layers=num_hidden_layers,
                              num_attention_heads=num_attention_heads, image_size=image_size,
                              patch_size=patch_size)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPVisionModel(config)
    if seed:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * noise)
    return model.eval()


def tiny_heads(tasks, width: int = 32, classes: int = 5, seed: int = 0
               ) -> dict[str, torch.Tensor]:
    """{task: [classes, width]} random heads over the tiny models' pooled output."""
    gen = torch.Generator().manual_seed(seed)
    return {t: torch.randn(classes, width, generator=gen) * 5 for t in tasks}


# ------------------------------------------------- a tiny classification task pool

#: The class names of the tiny tasks: a few per task, different counts.
TINY_CLASSES = {"task_a": 3, "task_b": 5, "task_c": 8}
TINY_TEMPLATES = [lambda c: f"a photo of a {c}.", lambda c: f"a {c}."]


def tiny_class_names(task: str) -> list[str]:
    return [f"{task} class {i}" for i in range(TINY_CLASSES[task])]


def tiny_clip_model(seed: int = 0, projection_dim: int = 16):
    """A random ``CLIPModel`` whose vision tower has the tiny pool's shapes, with a tiny
    text model (vocabulary of ``TinyCLIPProcessor``): the task pool's zero-shot heads."""
    from transformers import CLIPConfig, CLIPModel

    vision = tiny_clip_vision_model().config.to_dict()
    text = dict(vocab_size=TinyCLIPProcessor.VOCAB, hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=TinyCLIPProcessor.LENGTH, pad_token_id=0,
                bos_token_id=1, eos_token_id=TinyCLIPProcessor.VOCAB - 1)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CLIPModel(config).eval()


class TinyCLIPProcessor:
    """A processor for the tiny task pool, with no files to download: images (tensors)
    pass through; text becomes character ids (bos, characters, eos; padded with 0)."""

    VOCAB = 64
    LENGTH = 32

    def __call__(self, images=None, text=None, return_tensors: str = "pt", padding=True):
        if text is None:
            return images
        texts = [text] if isinstance(text, str) else list(text)
        ids = torch.zeros(len(texts), self.LENGTH, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, string in enumerate(texts):
            codes = [2 + ord(c) % (self.VOCAB - 3) for c in string[: self.LENGTH - 2]]
            tokens = [1, *codes, self.VOCAB - 1]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class TinyImageDataset(torch.utils.data.Dataset):
    """``size`` random images [3, 16, 16] with random labels of ``task``'s classes."""

    def __init__(self, task: str, size: int = 12, seed: int = 0) -> None:
        if task not in TINY_CLASSES:
            raise ValueError(f"tiny task pool: unknown task {task!r}; known: "
                             f"{sorted(TINY_CLASSES)}")
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randn(size, 3, 16, 16, generator=gen)
        self.labels = torch.randint(TINY_CLASSES[task], (size,), generator=gen).tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]


def tiny_classification_dataset(task: str, size: int = 12, seed: int = 0) -> TinyImageDataset:
    """Task ``task``'s tiny test set, its class names registered with FusionBench (its
    CLIP task pool looks a task's class names and templates up by the task's name)."""
    from fusion_bench.tasks.clip_classification import CLIPTemplateFactory

    dataset = TinyImageDataset(task, size, seed)
    # FusionBench 0.2.33's register_dataset rejects dataset_info alone and misspells
    # "templates" in its other form: write its table entry directly.
    CLIPTemplateFactory._dataset_mapping[task] = {"classnames": tiny_class_names(task),
                                                  "templates": TINY_TEMPLATES}
    return dataset
