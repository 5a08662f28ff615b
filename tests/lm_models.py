"""Tiny random Hugging Face causal LMs (configs built in code; nothing is downloaded)."""

from __future__ import annotations

import torch

FAMILIES = ("llama", "qwen2", "gpt2")
#: Families with the same layers, checked on forward logits only.
OTHER_FAMILIES = ("mistral", "gemma", "phi3", "qwen3")
VOCAB = 48


def tiny_causal_lm(family: str, seed: int, tie: bool = False) -> torch.nn.Module:
    """A 2-layer causal LM of ``family`` with random fp32 weights (seeded)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    if family == "llama":  # grouped-query attention: 4 query heads, 2 KV heads
        config = tf.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=64, tie_word_embeddings=tie, **common)
        cls = tf.LlamaForCausalLM
    elif family == "qwen2":  # q/k/v biases
        config = tf.Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=64, tie_word_embeddings=tie, **common)
        cls = tf.Qwen2ForCausalLM
    elif family in OTHER_FAMILIES:  # Gemma: (1 + w) RMSNorm, scaled token embedding
        name = {"mistral": "Mistral", "gemma": "Gemma", "phi3": "Phi3", "qwen3": "Qwen3"}[family]
        config = getattr(tf, f"{name}Config")(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, **common)
        cls = getattr(tf, f"{name}ForCausalLM")
    elif family == "gpt2":  # Conv1D layers, learned positions, tied embeddings
        config = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common)
        cls = tf.GPT2LMHeadModel
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # norms start at ones: make them differ between the models
        for name, p in model.named_parameters():
            if "norm" in name or name.startswith(("transformer.ln", "ln_")) or ".ln_" in name:
                p.add_(0.2 * torch.randn_like(p))
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model


def merged_reference(models, row) -> torch.nn.Module:
    """A plain model holding the interpolated state dict sum_i row[i] * state_i."""
    from tests.models import interpolate_model

    return interpolate_model(models, row)


def left_padded_prompts(batch: int = 3, length: int = 7, seed: int = 0):
    """(input_ids [B, L], attention_mask [B, L]) with different left-padding per row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        pad = (2 * b) % (length - 2)
        ids[b, :pad] = 0
        mask[b, :pad] = 0
    return ids, mask
