"""A latent adversarial term: a small patch discriminator that tells the model's one-step latents from true ones.

    term = AdversarialTerm(latent_channels=32, weight=0.05)
    logs = term.update(real, fake.detach())       # one discriminator step (hinge loss), real/fake [B, C, T, h, w]
    loss = mse + term.generator_loss(fake)        # weight · −D(fake), a gradient towards what D takes for real

Why: a one-step sampler trained on MSE to the ground truth predicts the expectation of every view it is unsure
of, and an expectation is a blur (docs/eval.md: detail 0.2 to 0.3 of the true views'). The MSE keeps the frame
on the place; this term, as in adversarial post-training of one-step generators (LADD, APT), pays for latents
that look like a real frame's: edges and texture instead of their average. It judges single latent frames (the
TinyVAE's 8×8 cells at 16×16 for 128² frames), so it is cheap beside the model's forward.

`conditional=True` shows the discriminator each frame beside the walk's start latent (the given image, channels
concatenated). An unconditional one takes any real-looking texture for real: trained with it, a desert walk turned
green and speckled (docs/training.md, step 17). Beside the start frame, texture and colour of another place are
evidence of a fake, so the term should pay only for detail that belongs to the walk's place.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LatentDiscriminator(nn.Module):
    """Patch logits [B·T, 1, h/2, w/2] for latent frames [B, C, T, h, w] (each frame judged on its own, beside the
    condition [B, C, h, w] when `conditional`)."""

    def __init__(self, latent_channels: int, width: int = 64, conditional: bool = False):
        super().__init__()
        self.conditional = conditional
        inputs = 2 * latent_channels if conditional else latent_channels
        self.net = nn.Sequential(
            nn.Conv2d(inputs, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, latents: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if latents.ndim != 5:
            raise ValueError(f"LatentDiscriminator needs latents [B, C, T, h, w], got {tuple(latents.shape)}")
        b, c, t, h, w = latents.shape
        if self.conditional != (condition is not None):
            raise ValueError("a conditional LatentDiscriminator needs the condition latent, and only it takes one")
        frames = latents.transpose(1, 2).reshape(b * t, c, h, w)  # [B·T, C, h, w]
        if condition is not None:
            if condition.shape != (b, c, h, w):
                raise ValueError(f"condition must be [B, C, h, w] = {(b, c, h, w)}, got {tuple(condition.shape)}")
            per_frame = condition[:, None].expand(b, t, c, h, w).reshape(b * t, c, h, w)
            frames = torch.cat([frames, per_frame.to(frames.dtype)], dim=1)  # [B·T, 2C, h, w]
        return self.net(frames.float())


class AdversarialTerm:
    """The discriminator, its optimiser and the generator's hinge term (see the module docstring).

    Its state (`state_dict` / `load_state_dict`) goes into the training checkpoint, so a resumed run keeps
    its discriminator."""

    def __init__(self, latent_channels: int, weight: float, lr: float = 2e-4, seed: int = 0,
                 conditional: bool = False):
        if not weight > 0:
            raise ValueError(f"adversarial weight must be > 0, got {weight}")
        torch.manual_seed(seed)
        self.weight = float(weight)
        self.discriminator = LatentDiscriminator(latent_channels, conditional=conditional)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.99))

    @property
    def conditional(self) -> bool:
        """Whether the discriminator judges each frame beside the walk's start latent."""
        return self.discriminator.conditional

    def update(self, real: torch.Tensor, fake: torch.Tensor, condition: torch.Tensor | None = None) -> dict[str, float]:
        """One discriminator step on latent frames real / fake [B, C, T, h, w] (fake detached by the caller),
        each beside `condition` [B, C, h, w] when conditional."""
        d = self.discriminator.to(real.device).train()
        if condition is not None:
            condition = condition.detach()
        real_logits, fake_logits = d(real.detach(), condition), d(fake.detach(), condition)
        loss = F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"d_loss": float(loss.detach()), "d_real": float(real_logits.detach().mean()),
                "d_fake": float(fake_logits.detach().mean())}

    def generator_loss(self, fake: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """weight · −mean D(fake): differentiable in `fake` [B, C, T, h, w]; the discriminator is not trained by it."""
        d = self.discriminator.to(fake.device)
        d.requires_grad_(False)
        try:
            return -self.weight * d(fake, None if condition is None else condition.detach()).mean()
        finally:
            d.requires_grad_(True)

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "weight": self.weight, "conditional": self.conditional}

    def load_state_dict(self, state: dict) -> None:
        if bool(state.get("conditional", False)) != self.conditional:
            raise ValueError(f"the checkpoint's discriminator has conditional={state.get('conditional', False)}, "
                             f"this run's has conditional={self.conditional}")
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
