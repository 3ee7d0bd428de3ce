"""Prompt conditioning of SANA-WM: Gemma-2 last hidden states in the official token layout.

    encoder = TextEncoder.from_folder("gemma-2-2b-it", device="cuda", dtype=torch.bfloat16)
    text, mask = encoder.encode("a quiet forest path")      # [1, 300, 2304], [1, 300]
    neg, neg_mask = encoder.encode_negative("")             # the CFG branch

Token layout (sana_wm.md §7): the instruction lines `chi_prompt` are joined with "\n" and put in
front of the prompt; that string is tokenised with right padding to len(tokens(chi)) + L − 2 and the
first token (BOS) plus the last L − 1 are kept, L = 300. The negative prompt is tokenised alone to L.
The model runs on the padded ids with their attention mask; the mask goes to the DiT's cross-attention.

Without a text encoder, prompts must be empty and `empty_prompt(model)` gives the DiT's own null
caption (`WorldModel.null_text`). Folders are local only; nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

MAX_LENGTH = 300

# The instruction prefix of the released configs (SANA's "complex human instruction").
DEFAULT_CHI_PROMPT: tuple[str, ...] = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for '
    "image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
    "relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping "
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:",
    "User Prompt: ",
)


class TextEncoder:
    """A Gemma-2 decoder and its tokenizer, encoding prompts in the official layout (module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, chi_prompt: tuple[str, ...] = DEFAULT_CHI_PROMPT,
                 max_length: int = MAX_LENGTH, source: str = "<memory>") -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer of {source} has no pad token; the official layout pads on the right")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.chi = "\n".join(chi_prompt)
        self.max_length = max_length
        self.source = source

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None, **kwargs) -> TextEncoder:
        """Load a local Gemma-2 folder (config.json, weights and tokenizer files); ValueError naming the folder."""
        from transformers import AutoConfig, AutoTokenizer, Gemma2Model

        root = Path(folder).expanduser()
        if not (root / "config.json").is_file():
            raise ValueError(f"text encoder folder {str(root)!r} has no config.json")
        try:
            config = AutoConfig.from_pretrained(str(root), local_files_only=True)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the text encoder config in {str(root)!r}: {error}") from error
        # Gemma-2-2B-it releases are Gemma2ForCausalLM; its inner Gemma2Model gives the same last hidden state.
        if getattr(config, "model_type", None) != "gemma2":
            raise ValueError(f"text encoder {str(root)!r} is a {getattr(config, 'model_type', '?')!r} model; "
                             "SANA-WM's stage 1 uses Gemma-2 (model_type 'gemma2')")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
            model = Gemma2Model.from_pretrained(str(root), local_files_only=True, dtype=dtype or torch.float32)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"cannot load the Gemma-2 text encoder from {str(root)!r}: {error}") from error
        return cls(model.to(device or "cpu"), tokenizer, source=repr(str(root)), **kwargs)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def _tokenize(self, prompt: str, with_chi: bool) -> tuple[torch.Tensor, torch.Tensor, list[int] | None]:
        """Padded ids and mask [1, n] of the model input, and the positions kept afterwards (None = all)."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if not (with_chi and self.chi):
            tokens = self.tokenizer([prompt], max_length=self.max_length, padding="max_length", truncation=True,
                                    return_tensors="pt")
            return tokens.input_ids, tokens.attention_mask, None
        length = len(self.tokenizer.encode(self.chi)) + self.max_length - 2
        tokens = self.tokenizer([self.chi + prompt], max_length=length, padding="max_length", truncation=True,
                                return_tensors="pt")
        keep = [0] + list(range(length - self.max_length + 1, length))
        return tokens.input_ids, tokens.attention_mask, keep

    def token_ids(self, prompt: str, *, with_chi: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids and attention mask ([1, L] each) that `encode` keeps for `prompt`."""
        ids, mask, keep = self._tokenize(prompt, with_chi)
        return (ids, mask) if keep is None else (ids[:, keep], mask[:, keep])

    @torch.no_grad()
    def _encode(self, prompt: str, with_chi: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, keep = self._tokenize(prompt, with_chi)
        device = next(self.model.parameters()).device
        # The model sees the whole padded sequence (prefix included); positions are selected afterwards.
        hidden = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state  # [1, n, D]
        mask = mask.to(device)
        return (hidden, mask) if keep is None else (hidden[:, keep], mask[:, keep])

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt with the instruction prefix -> (hidden states [1, L, D], mask [1, L])."""
        return self._encode(prompt, with_chi=True)

    def encode_negative(self, prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Negative prompt, no instruction prefix -> (hidden states [1, L, D], mask [1, L])."""
        return self._encode(prompt, with_chi=False)


def empty_prompt(model, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The no-text-encoder path: the DiT's null caption ([B, L, C_text], mask [B, L])."""
    return model.null_text(batch_size)
