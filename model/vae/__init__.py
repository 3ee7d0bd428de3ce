"""roam's video autoencoders. `TinyVAE` is the small causal one the embedded model is trained in.

    from model.vae import load_tiny_vae
    vae = load_tiny_vae()                         # the committed weights
    z = vae.encode(video)                         # [B,3,F,H,W] in [-1,1] -> [B,C,T,h,w], T = (F-1)/stride + 1
    video = vae.decode(z)
    dec = vae.stream_decoder(batch_size=1)
    frames = dec.decode_chunk(z[:, :, :3])        # then z[:, :, 3:5], ...: the same frames as vae.decode(z)
"""
from __future__ import annotations

from model.vae.io import DEFAULT_WEIGHTS, load_tiny_vae, save_tiny_vae
from model.vae.tiny_vae import StreamDecoder, TinyVAE, TinyVAEConfig, cpu_decoder_dtype

__all__ = ["DEFAULT_WEIGHTS", "StreamDecoder", "TinyVAE", "TinyVAEConfig", "cpu_decoder_dtype", "load_tiny_vae", "save_tiny_vae"]
