"""Convolutional layers, for Table 1's comparison (§4) only: not part of any model here.

§4 compares self-attention with "a single convolutional layer with kernel width k < n", O(k·n·d²) per
layer, and with separable convolutions (Chollet 2017), O(k·n·d + n·d²): a depthwise convolution (one
kernel of width k per channel) followed by a pointwise one (a d×d linear map at every position).
Both keep the sequence length ('same' padding) so that, like an attention layer, they map
(B, n, d) → (B, n, d) and can be stacked.
"""

from __future__ import annotations

from torch import Tensor, nn


class ConvLayer(nn.Module):
    """A 1-D convolution of kernel width ``k`` (odd) over the positions, d channels in and out, followed
    by ReLU; ``separable``: depthwise k-wide convolution, then a pointwise (1-wide) one."""

    def __init__(self, d_model: int, k: int = 3, separable: bool = False) -> None:
        super().__init__()
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel width must be odd (centred on the position), got {k}")
        self.k, self.separable = k, separable
        if separable:
            self.depthwise = nn.Conv1d(d_model, d_model, k, padding=k // 2, groups=d_model)  # k·d weights
            self.pointwise = nn.Conv1d(d_model, d_model, 1)  # d² weights
        else:
            self.conv = nn.Conv1d(d_model, d_model, k, padding=k // 2)  # k·d² weights

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, n, d) → (B, n, d); position i sees positions i − k//2 … i + k//2."""
        h = x.transpose(1, 2)  # (B, d, n): channels first for Conv1d
        h = self.pointwise(self.depthwise(h)) if self.separable else self.conv(h)
        return h.relu().transpose(1, 2)
