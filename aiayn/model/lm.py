"""The decoder-only language model (GPT; Radford et al. 2018, nanoGPT): the Transformer's decoder
stack alone, causal self-attention only, trained to predict the next token.

It is built from the same layers as the encoder-decoder (:class:`~aiayn.model.layers.DecoderLayer`
without encoder-decoder attention), so every option of :class:`~aiayn.config.ModelConfig` applies.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from .attention import KVCache
from .layers import Embedding, InputLayer, init_linear_weights
from .transformer import Decoder, DecoderState, OutputLayer


class LanguageModel(nn.Module):
    """tokens (B, T) → next-token logits (B, T, V)."""

    kv_cache: type[KVCache] = KVCache  # the self-attention cache of incremental decoding (aiayn.accel may swap it)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        emb = Embedding(cfg.vocab_size, cfg.d_model, cfg.scale_embeddings)
        self.decoder = Decoder(cfg, InputLayer(cfg, emb), cross_attention=False)
        # A language model has one vocabulary: any tying means input embedding == output projection.
        self.output = OutputLayer(cfg.d_model, cfg.vocab_size, emb if cfg.tie != "none" else None, cfg.output_bias)
        init_linear_weights(self.decoder)

    @property
    def block_size(self) -> int:
        """The longest context the model is trained on (and the most a learned position table holds)."""
        return self.cfg.max_positions

    def forward(self, tokens: Tensor) -> Tensor:
        return self.output(self.decoder(tokens))

    def start(self) -> DecoderState:
        return DecoderState.empty(len(self.decoder.layers), cache=self.kv_cache)

    def step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """tokens: (B, t) new tokens → logits (B, t, V); the caches in ``state`` grow by t."""
        return self.output(self.decoder(tokens, state=state))
