"""A latent adversarial term: a small patch discriminator that tells the model's one-step latents from true ones.

    term = AdversarialTerm(latent_channels=32, weight=0.05)
    logs = term.update(real, fake.detach())       # one discriminator step (hinge loss), real/fake [B, C, T, h, w]
    loss = mse + term.generator_loss(fake)        # weight · −D(fake), a gradient towards what D takes for real

Why: a one-step sampler trained on MSE to the ground truth predicts the expectation of every view it is unsure
of, and an expectation is a blur (docs/eval.md: detail 0.2 to 0.3 of the true views'). The MSE keeps the frame
on the place; this term, as in adversarial post-training of one-step generators (LADD, APT), pays for latents
that look like a real frame's: edges and texture instead of their average. It judges single latent frames (the
TinyVAE's 8×8 cells at 16×16 for 128² frames), so it is cheap beside the model's forward.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LatentDiscriminator(nn.Module):
    """Patch logits [B·T, 1, h/2, w/2] for latent frames [B, C, T, h, w] (each frame judged on its own)."""

    def __init__(self, latent_channels: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5:
            raise ValueError(f"LatentDiscriminator needs latents [B, C, T, h, w], got {tuple(latents.shape)}")
        b, c, t, h, w = latents.shape
        frames = latents.transpose(1, 2).reshape(b * t, c, h, w)  # [B·T, C, h, w]
        return self.net(frames.float())


class AdversarialTerm:
    """The discriminator, its optimiser and the generator's hinge term (see the module docstring).

    Its state (`state_dict` / `load_state_dict`) goes into the training checkpoint, so a resumed run keeps
    its discriminator."""

    def __init__(self, latent_channels: int, weight: float, lr: float = 2e-4, seed: int = 0):
        if not weight > 0:
            raise ValueError(f"adversarial weight must be > 0, got {weight}")
        torch.manual_seed(seed)
        self.weight = float(weight)
        self.discriminator = LatentDiscriminator(latent_channels)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.99))

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One discriminator step on latent frames real / fake [B, C, T, h, w] (fake detached by the caller)."""
        d = self.discriminator.to(real.device).train()
        real_logits, fake_logits = d(real.detach()), d(fake.detach())
        loss = F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"d_loss": float(loss.detach()), "d_real": float(real_logits.detach().mean()),
                "d_fake": float(fake_logits.detach().mean())}

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """weight · −mean D(fake): differentiable in `fake` [B, C, T, h, w]; the discriminator is not trained by it."""
        d = self.discriminator.to(fake.device)
        d.requires_grad_(False)
        try:
            return -self.weight * d(fake).mean()
        finally:
            d.requires_grad_(True)

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "weight": self.weight}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
