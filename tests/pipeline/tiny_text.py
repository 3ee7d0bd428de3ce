"""A tiny Gemma-2 text encoder folder (random weights, a word-level tokenizer) written for tests."""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["a", "quiet", "forest", "path", "user", "prompt:", "the", "city", "at", "night", "given", "generate"]


def word_tokenizer():
    """A word-level tokenizer over WORDS (with <bos> prepended) and its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>"), len(vocab)


def write_tiny_gemma2(folder: Path, hidden_size: int = 32, seed: int = 0) -> Path:
    """Write config, safetensors and tokenizer files of a 2-layer Gemma2ForCausalLM into `folder`."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer, vocab_size = word_tokenizer()
    torch.manual_seed(seed)
    config = Gemma2Config(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
    folder.mkdir(parents=True, exist_ok=True)
    Gemma2ForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
