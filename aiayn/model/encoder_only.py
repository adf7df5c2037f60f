"""The encoder-only model (bidirectional; the shape BERT later took): the Transformer's encoder stack
with a masked-token prediction head and an optional sequence-classification head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import UNK_ID, ModelConfig
from .layers import Embedding, InputLayer, init_linear_weights
from .transformer import Encoder, OutputLayer, padding_mask

MASK_ID = UNK_ID  # the vocabularies have no [MASK]: <unk>, which prepared text does not use, stands in for it
MASK_FRACTION = 0.15  # BERT (Devlin et al. 2019, §3.1): 15 % of the positions are predicted …


def mask_tokens(tokens: Tensor, vocab_size: int, generator: torch.Generator | None = None,
                fraction: float = MASK_FRACTION) -> tuple[Tensor, Tensor]:
    """BERT's corruption for masked-token prediction: each position is chosen with probability
    ``fraction``; a chosen token becomes the mask symbol 80 % of the time, a random token 10 %, and stays
    10 %. Returns (inputs, targets): targets hold the original token at chosen positions and -100
    (ignored) elsewhere. Special tokens (ids < 4) are never chosen."""
    def uniform() -> Tensor:
        return torch.rand(tokens.shape, generator=generator, device=tokens.device)

    chosen = (uniform() < fraction) & (tokens >= 4)
    targets = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    action = uniform()
    random_tokens = torch.randint(4, vocab_size, tokens.shape, generator=generator, device=tokens.device)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(tokens, MASK_ID), tokens)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
    return inputs, targets


class EncoderModel(nn.Module):
    """tokens (B, S) → contextual states (B, S, d), with two heads:

    * ``mlm_logits``: masked-token prediction over the vocabulary (tied to the embedding unless tie=none);
    * ``classify``: one label per sequence from the mean of its non-padding states (``n_classes`` > 0).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        emb = Embedding(cfg.vocab_size, cfg.d_model, cfg.scale_embeddings)
        self.encoder = Encoder(cfg, InputLayer(cfg, emb))
        self.mlm_transform = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias),
            {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[cfg.activation](),
            nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps, bias=cfg.bias),
        )
        self.output = OutputLayer(cfg.d_model, cfg.vocab_size, emb if cfg.tie != "none" else None, cfg.output_bias)
        self.classifier = nn.Linear(cfg.d_model, cfg.n_classes) if cfg.n_classes > 0 else None
        init_linear_weights(self)

    def forward(self, tokens: Tensor, mlm: bool = False, classify: bool = False) -> Tensor:
        """(B, S) → the contextual states (B, S, d); with ``mlm`` the masked-token logits (B, S, V); with
        ``classify`` the class logits (B, n_classes) (one entry point, so that DDP and torch.compile wrap
        training as they wrap every other model)."""
        mask = padding_mask(tokens)
        h = self.encoder(tokens, mask)  # (B, S, d)
        if mlm:
            return self.output(self.mlm_transform(h))
        if classify:
            if self.classifier is None:
                raise ValueError("this model has no classification head (set n_classes > 0)")
            keep = mask[:, 0, 0, :, None].to(h.dtype)  # (B, S, 1): the mean over real tokens
            return self.classifier((h * keep).sum(1) / keep.sum(1).clamp_min(1.0))
        return h

    def mlm_logits(self, tokens: Tensor) -> Tensor:
        """(B, S) → (B, S, V): a distribution over the vocabulary at every position."""
        return self(tokens, mlm=True)

    def classify(self, tokens: Tensor) -> Tensor:
        """(B, S) → (B, n_classes) logits, from the mean of the non-padding states."""
        return self(tokens, classify=True)

    def mlm_loss(self, tokens: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
        """Cross-entropy at the masked positions (targets = ignore_index elsewhere)."""
        logits = self.mlm_logits(tokens)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
