"""A tiny random SANA-WM_streaming release with everything its authors run it with, written for tests.

    write_tiny_refiner(root)          refiner_diffusers/{transformer,connectors}/ + gemma3_12b/ (diffusers and
                                      transformers folders of a 2-layer LTX-2 refiner and a 2-layer Gemma-3)
    write_official_streaming(root)    write_streaming's DiT and causal VAE, a Gemma-2 text_encoder/, the refiner
                                      parts, and a roam.json of 64x64 with 3-latent chunks (the refiner's block size)

The refiner works in the tiny VAE's 8-channel latent space; its caption width follows the tiny Gemma-3
(32 wide, 2 layers: 3 hidden states). Everything is seeded.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.pipeline.tiny_release import VAE_CONFIG, write_streaming
from tests.pipeline.tiny_text import word_tokenizer, write_tiny_gemma2

GEMMA3_HIDDEN = 32
GEMMA3_LAYERS = 2
REFINER_SETTINGS = {"height": 64, "width": 64, "chunk_latents": 3, "hfov_deg": 70.0}




def tiny_refiner_parts(seed: int = 0, latent_channels: int = VAE_CONFIG["latent_channels"]):
    """(transformer, connectors, tokenizer, text encoder) of a tiny random refiner, in memory."""
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    tokenizer, vocab = word_tokenizer()
    torch.manual_seed(seed)
    text = Gemma3TextConfig(vocab_size=64, hidden_size=GEMMA3_HIDDEN, intermediate_size=64, num_hidden_layers=GEMMA3_LAYERS,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=16, patch_size=8)
    encoder = Gemma3ForConditionalGeneration(Gemma3Config(
        text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
        image_token_index=vocab, boi_token_index=vocab + 1, eoi_token_index=vocab + 2)).eval()
    connectors = LTX2TextConnectors(
        caption_channels=GEMMA3_HIDDEN, text_proj_in_factor=GEMMA3_LAYERS + 1,
        video_connector_num_attention_heads=2, video_connector_attention_head_dim=16, video_connector_num_layers=1,
        video_connector_num_learnable_registers=8, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=16, audio_connector_num_layers=1, audio_connector_num_learnable_registers=8,
        video_hidden_dim=GEMMA3_HIDDEN, audio_hidden_dim=GEMMA3_HIDDEN).eval()
    transformer = SanaWMLTX2RefinerTransformer3DModel(
        in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=2, attention_head_dim=16,
        cross_attention_dim=32, caption_channels=GEMMA3_HIDDEN, num_layers=2, audio_in_channels=8, audio_out_channels=8,
        audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16).eval()
    return transformer, connectors, tokenizer, encoder


def write_tiny_refiner(root: Path, seed: int = 0) -> Path:
    """Write `refiner_diffusers/` and `gemma3_12b/` of a tiny random refiner into the release folder `root`."""
    transformer, connectors, tokenizer, encoder = tiny_refiner_parts(seed)
    transformer.save_pretrained(str(root / "refiner_diffusers" / "transformer"))
    connectors.save_pretrained(str(root / "refiner_diffusers" / "connectors"))
    encoder.save_pretrained(str(root / "gemma3_12b"))
    tokenizer.save_pretrained(str(root / "gemma3_12b"))
    return root


def write_official_streaming(root: Path, seed: int = 0, *, text_encoder: bool = True, refiner: bool = True) -> Path:
    """A tiny SANA-WM_streaming folder with (by default) its stage-1 Gemma-2 text encoder and its refiner."""
    write_streaming(root, seed)
    (root / "roam.json").write_text(json.dumps(REFINER_SETTINGS))
    if text_encoder:
        write_tiny_gemma2(root / "text_encoder", hidden_size=32, seed=seed)
    if refiner:
        write_tiny_refiner(root, seed)
    return root
