"""The networks of NVlabs EDM's checkpoints, implemented for this project.

An EDM checkpoint (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", arXiv 2206.00364) holds a preconditioned denoiser ``D(x; sigma)``:
:class:`VPPrecond`, :class:`VEPrecond` or :class:`EDMPrecond` (the paper's Table 1) around a
U-Net ``F``, either :class:`SongUNet` (DDPM++ and NCSN++ of Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations", arXiv 2011.13456, Appendix H)
or :class:`DhariwalUNet` (ADM of Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
Synthesis", arXiv 2105.05233), configured as in the EDM paper's Appendix F.2 and Table 7:

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)).

The classes here are written from those papers. What must agree with EDM's own code does:
constructor argument names and defaults, and the names of submodules, parameters and buffers.
So the constructor arguments an EDM network pickle records build the same network, and its
tensors load with ``load_state_dict(strict=True)`` (:mod:`dibregman.pretrained.edm`). EDM's list
defaults (``channel_mult=[1,2,2,2]``) are tuples here; a recorded list builds the same network.

Precision: the preconditionings accept ``use_fp16`` and ``force_fp32`` so that recorded
arguments build, but always compute in float32.

Shapes: images ``x`` are ``(N, C, H, W)`` with ``H = W = img_resolution``; noise levels
``sigma`` are a scalar or ``(N,)``; class labels are one-hot (or soft) ``(N, label_dim)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dibregman.networks import edm_preconditioning

INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


def initial_weights(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> Tensor:
    """Random weights of ``shape`` with unit gain: Glorot (``xavier_*``, variance
    ``2 / (fan_in + fan_out)``) or He (``kaiming_*``, variance ``1 / fan_in``), uniform or normal.
    Drawn from torch's global generator."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (2 * torch.rand(*shape) - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (2 * torch.rand(*shape) - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init_mode {mode!r}; known: {', '.join(INIT_MODES)}")


# ---------------------------------------------------------------------------------------------
# Layers.


class Linear(nn.Module):
    """``y = x W^T + b``: ``(..., in_features) -> (..., out_features)``.

    ``weight`` is ``(out_features, in_features)``, ``bias`` ``(out_features,)`` (absent when
    ``bias=False``); both drawn by :func:`initial_weights` and scaled by ``init_weight`` and
    ``init_bias`` (0: a zero bias).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_mode: str = "kaiming_normal", init_weight: float = 1,
                 init_bias: float = 0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = {"mode": init_mode, "fan_in": in_features, "fan_out": out_features}
        self.weight = nn.Parameter(initial_weights((out_features, in_features), **fans)
                                   * init_weight)
        self.bias = (nn.Parameter(initial_weights((out_features,), **fans) * init_bias)
                     if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class Conv2d(nn.Module):
    """A ``kernel x kernel`` convolution with 'same' padding, optionally after a 2x FIR
    resampling: ``(N, in_channels, H, W) -> (N, out_channels, H', W')``, ``H' = 2H`` (``up``),
    ``H / 2`` (``down``) or ``H``.

    ``kernel=0`` has no weights: the layer only resamples (then ``in_channels`` must equal
    ``out_channels``). Resampling uses the separable filter ``f = r r^T / (sum r)^2`` of
    ``resample_filter = r`` (``[1, 1]``: box, DDPM++; ``[1, 3, 3, 1]``: binomial, NCSN++),
    kept as the buffer ``resample_filter`` of shape ``(1, 1, len(r), len(r))`` and applied to
    each channel with stride 2 (down) or as a transposed convolution with gain 4 (up, so that a
    constant image stays constant). ``fused_resample`` (down only, with weights; NCSN++'s
    residual encoder) convolves first at full resolution, padded by both kernels' margins, and
    then filters with stride 2.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False,
                 resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1,
                 init_bias: float = 0) -> None:
        if up and down:
            raise ValueError("a Conv2d resamples up or down, not both")
        if fused_resample and not (down and kernel):
            raise ValueError("fused_resample needs down=True and a kernel")
        if not kernel and in_channels != out_channels:
            raise ValueError("kernel=0 (resampling only) needs in_channels == out_channels")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = {"mode": init_mode, "fan_in": in_channels * kernel * kernel,
                "fan_out": out_channels * kernel * kernel}
        self.weight = (nn.Parameter(initial_weights((out_channels, in_channels, kernel, kernel),
                                                    **fans) * init_weight)
                       if kernel else None)
        self.bias = (nn.Parameter(initial_weights((out_channels,), **fans) * init_bias)
                     if kernel and bias else None)
        taps = torch.as_tensor(resample_filter, dtype=torch.float32)
        fir = (torch.outer(taps, taps) / taps.sum().square())[None, None]
        self.register_buffer("resample_filter", fir if up or down else None)

    def forward(self, x: Tensor) -> Tensor:
        fir = self.resample_filter
        fir_pad = (fir.shape[-1] - 1) // 2 if fir is not None else 0
        weight_pad = self.weight.shape[-1] // 2 if self.weight is not None else 0
        if self.fused_resample:
            x = F.conv2d(x, self.weight, padding=weight_pad + fir_pad)
            x = F.conv2d(x, fir.tile(self.out_channels, 1, 1, 1), groups=self.out_channels,
                         stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (4 * fir).tile(self.in_channels, 1, 1, 1),
                                       groups=self.in_channels, stride=2, padding=fir_pad)
            if self.down:
                x = F.conv2d(x, fir.tile(self.in_channels, 1, 1, 1), groups=self.in_channels,
                             stride=2, padding=fir_pad)
            if self.weight is not None:
                x = F.conv2d(x, self.weight, padding=weight_pad)
        if self.bias is not None:
            x = x + self.bias.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with ``min(num_groups, num_channels // min_channels_per_group)``
    groups and a per-channel affine ``weight`` and ``bias`` (``(num_channels,)``)."""

    def __init__(self, num_channels: int, num_groups: int = 32,
                 min_channels_per_group: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class UNetBlock(nn.Module):
    """A residual block conditioned on an embedding, optionally resampling and with
    self-attention: ``(N, in_channels, H, W), (N, emb_channels) -> (N, out_channels, H', W')``.

    The union of DDPM++, NCSN++ and ADM's blocks::

        h = conv0(silu(norm0(x)))                         # up/downsampled when asked
        h = silu(norm1(h) * (1 + scale) + shift)          # adaptive_scale: (scale, shift) =
                                                          #   affine(emb)
          | silu(norm1(h + affine(emb)))                  # otherwise
        h = skip_scale * (conv1(dropout(h)) + skip(x))    # skip: identity, resampling or 1x1
        h = skip_scale * (h + proj(attention(norm2(h))))  # with attention

    ``skip`` exists when the channels change or the block resamples; it has a 1x1 kernel when
    the channels change or ``resample_proj``, else it only resamples. Attention is multi-head
    dot-product self-attention over the ``H W`` positions with ``num_heads`` heads (default
    ``out_channels // channels_per_head``); ``qkv``'s ``3 * out_channels`` outputs are laid
    out per head as ``(head, channel, q|k|v)``. ``init``, ``init_zero`` and ``init_attn`` are
    :class:`Conv2d`/:class:`Linear` initialisation arguments of the ordinary layers, the layers
    ending a residual branch (``conv1``, ``proj``; default ``init_weight=0``) and ``qkv``
    (default: ``init``).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int,
                 up: bool = False, down: bool = False, attention: bool = False,
                 num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0, skip_scale: float = 1, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False,
                 adaptive_scale: bool = True, init: Mapping[str, Any] | None = None,
                 init_zero: Mapping[str, Any] | None = None,
                 init_attn: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero) if init_zero is not None else {"init_weight": 0}
        init_attn = dict(init_attn) if init_attn is not None else init
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else (out_channels
                                                                     // channels_per_head)
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **init_attn)
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if self.num_heads:
            h = (h + self.proj(self._attention(self.norm2(h)))) * self.skip_scale
        return h

    def _attention(self, x: Tensor) -> Tensor:
        """softmax(q^T k / sqrt(d)) applied to v per head: ``(N, C, H, W) -> (N, C, H, W)``."""
        n, c, height, width = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(n * heads, c // heads, 3, height * width).unbind(2)
        weights = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
        return torch.einsum("nqk,nck->ncq", weights, v).reshape(n, c, height, width)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a noise label (DDPM++, ADM): ``(N,) -> (N, num_channels)``,
    ``[cos(t w_i), sin(t w_i)]`` with ``w_i = max_positions^(-i / (num_channels / 2 - e))``,
    ``i < num_channels / 2``, ``e = 1`` when ``endpoint`` (the last frequency is then
    ``1 / max_positions``) else 0."""

    def __init__(self, num_channels: int, max_positions: int = 10000,
                 endpoint: bool = False) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, t: Tensor) -> Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=t.device)
        exponents = exponents / (half - (1 if self.endpoint else 0))
        angles = torch.outer(t, ((1 / self.max_positions) ** exponents).to(t.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a noise label (NCSN++): ``(N,) -> (N, num_channels)``,
    ``[cos(2 pi t w), sin(2 pi t w)]`` with the buffer ``freqs`` ``w ~ N(0, scale^2)``
    (``(num_channels // 2,)``)."""

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        angles = torch.outer(t, (2 * math.pi * self.freqs).to(t.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


def _role(name: str) -> str:
    """What an entry of a U-Net's ``enc``/``dec`` does, from its name ``'{res}x{res}_{role}'``
    less any block index: conv, down, up, block, in, aux_down, aux_skip, aux_residual, aux_up,
    aux_norm or aux_conv."""
    return name.split("_", 1)[1].rstrip("0123456789")


def _dropped_labels(labels: Tensor, p: float, training: bool) -> Tensor:
    """Class labels with whole rows zeroed with probability ``p`` while training (the
    unconditional branch of classifier-free guidance)."""
    if not (training and p):
        return labels
    keep = torch.rand(labels.shape[0], 1, device=labels.device) >= p
    return labels * keep.to(labels.dtype)


# ---------------------------------------------------------------------------------------------
# U-Nets: F(x_in, noise_labels, class_labels) -> (N, out_channels, H, W).


class SongUNet(nn.Module):
    """DDPM++ and NCSN++ (Song et al. 2021, Appendix H; EDM, Table 7).

    DDPM++: ``embedding_type='positional'``, ``channel_mult_noise=1``, ``encoder_type=
    'standard'``, ``decoder_type='standard'``, ``resample_filter=[1,1]``. NCSN++: ``'fourier'``,
    ``2``, ``'residual'``, ``'standard'``, ``[1,3,3,1]``.

    Mapping: the noise embedding (``map_noise``, ``model_channels * channel_mult_noise`` wide,
    its sin and cos halves swapped), plus ``map_label`` of the class labels scaled by
    ``sqrt(label_dim)`` and ``map_augment`` of augmentation labels, through ``map_layer0`` and
    ``map_layer1`` (SiLU after each) gives the embedding ``emb`` (``model_channels *
    channel_mult_emb`` wide) every :class:`UNetBlock` is conditioned on.

    Encoder ``enc`` (keys ``'{res}x{res}_{role}'``): a 3x3 ``conv`` to ``model_channels`` at the
    input resolution, then per level a ``down`` block (levels after the first) and
    ``num_blocks`` ``block{i}`` of ``model_channels * channel_mult[level]`` channels, with
    attention at ``attn_resolutions``. ``encoder_type='skip'`` adds, per downsampling, the input
    image downsampled (``aux_down``) and projected (``aux_skip``) onto the features;
    ``'residual'`` carries a second downsampling path (``aux_residual``) whose sum with the
    features, over ``sqrt(2)``, replaces them.

    Decoder ``dec``: at the lowest resolution ``in0`` (attention) and ``in1``, else an ``up``
    block; then ``num_blocks + 1`` ``block{i}``, each fed the features concatenated with the
    encoder's output of the same position (last in, first out), the last of a level with
    attention at ``attn_resolutions``. The output head (``aux_norm``, SiLU, ``aux_conv``) runs at
    the input resolution (``decoder_type='standard'``), or at every level with the running
    output upsampled (``aux_up``) and added (``'skip'``).
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int,
                 label_dim: int = 0, augment_dim: int = 0, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0,
                 embedding_type: str = "positional", channel_mult_noise: int = 1,
                 encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[float] = (1, 1)) -> None:
        for option, value, valid in (("embedding_type", embedding_type, ("positional", "fourier")),
                                     ("encoder_type", encoder_type,
                                      ("standard", "skip", "residual")),
                                     ("decoder_type", decoder_type, ("standard", "skip"))):
            if value not in valid:
                raise ValueError(f"{option}={value!r}; valid: {', '.join(valid)}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = {"init_mode": "xavier_uniform"}
        init_zero = {"init_mode": "xavier_uniform", "init_weight": 1e-5}
        init_attn = {"init_mode": "xavier_uniform", "init_weight": math.sqrt(0.2)}
        block_kwargs = {"emb_channels": emb_channels, "num_heads": 1, "dropout": dropout,
                        "skip_scale": math.sqrt(0.5), "eps": 1e-6,
                        "resample_filter": resample_filter, "resample_proj": True,
                        "adaptive_scale": False, "init": init, "init_zero": init_zero,
                        "init_attn": init_attn}

        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True)
                          if embedding_type == "positional" else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = (Linear(augment_dim, noise_channels, bias=False, **init)
                            if augment_dim else None)
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        self.enc = nn.ModuleDict()
        channels = in_channels  # of the features
        aux_channels = in_channels  # of the encoder's auxiliary path
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(channels, model_channels, kernel=3, **init)
                channels = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(channels, channels, down=True,
                                                          **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        aux_channels, aux_channels, kernel=0, down=True,
                        resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(aux_channels, channels, kernel=1,
                                                               **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        aux_channels, channels, kernel=3, down=True,
                        resample_filter=resample_filter, fused_resample=True, **init)
                    aux_channels = channels
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    channels, model_channels * mult, attention=res in attn_resolutions,
                    **block_kwargs)
                channels = model_channels * mult
        skips = [block.out_channels for name, block in self.enc.items()
                 if not _role(name).startswith("aux")]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            lowest = level == len(channel_mult) - 1
            if lowest:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(channels, channels, attention=True,
                                                         **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(channels, channels, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(channels, channels, up=True,
                                                        **block_kwargs)
            for idx in range(num_blocks + 1):
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    channels + skips.pop(), model_channels * mult, attention=attention,
                    **block_kwargs)
                channels = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and not lowest:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, kernel=0, up=True,
                        resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(channels, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(channels, out_channels, kernel=3,
                                                           **init_zero)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None,
                augment_labels: Tensor | None = None) -> Tensor:
        """``(N, in_channels, H, W), (N,), (N, label_dim) -> (N, out_channels, H, W)``;
        ``class_labels`` are ignored (may be None) when ``label_dim == 0``, and so are
        ``augment_labels`` when ``augment_dim == 0``."""
        cos, sin = self.map_noise(noise_labels).chunk(2, dim=1)
        emb = torch.cat([sin, cos], dim=1)
        if self.map_label is not None:
            labels = _dropped_labels(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips = []
        aux = x
        for name, layer in self.enc.items():
            role = _role(name)
            if role == "aux_down":
                aux = layer(aux)
            elif role == "aux_skip":
                x = skips[-1] = x + layer(aux)
            elif role == "aux_residual":
                x = skips[-1] = aux = (x + layer(aux)) / math.sqrt(2)
            else:
                x = layer(x) if role == "conv" else layer(x, emb)
                skips.append(x)

        out = None
        head = None
        for name, layer in self.dec.items():
            role = _role(name)
            if role == "aux_up":
                out = layer(out)
            elif role == "aux_norm":
                head = layer(x)
            elif role == "aux_conv":
                head = layer(F.silu(head))
                out = head if out is None else out + head
            else:
                if role == "block":
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return out


class DhariwalUNet(nn.Module):
    """ADM (Dhariwal & Nichol 2021; EDM, Table 7).

    Mapping: the positional embedding of the noise label (``model_channels`` wide), plus
    ``map_augment`` of augmentation labels, through ``map_layer0``, SiLU and ``map_layer1``,
    plus ``map_label`` of the class labels (no bias), then SiLU, gives the embedding ``emb``
    (``model_channels * channel_mult_emb`` wide).

    Encoder ``enc``: a 3x3 ``conv`` to ``model_channels * channel_mult[0]``, then per level a
    ``down`` block (levels after the first) and ``num_blocks`` ``block{i}``. Decoder ``dec``: at
    the lowest resolution ``in0`` (attention) and ``in1``, else an ``up`` block; then
    ``num_blocks + 1`` ``block{i}`` on the features concatenated with the matching encoder
    output. Blocks use adaptive group-norm scale and shift, attention at ``attn_resolutions``
    with 64 channels per head, and no 1x1 projection on a resampling skip. Output:
    ``out_conv(silu(out_norm(x)))``.
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int,
                 label_dim: int = 0, augment_dim: int = 0, model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_emb: int = 4,
                 num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0) -> None:
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = {"init_mode": "kaiming_uniform", "init_weight": math.sqrt(1 / 3),
                "init_bias": math.sqrt(1 / 3)}
        init_zero = {"init_mode": "kaiming_uniform", "init_weight": 0, "init_bias": 0}
        block_kwargs = {"emb_channels": emb_channels, "channels_per_head": 64,
                        "dropout": dropout, "init": init, "init_zero": init_zero}

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = (Linear(augment_dim, model_channels, bias=False, **init_zero)
                            if augment_dim else None)
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim))
                          if label_dim else None)

        self.enc = nn.ModuleDict()
        channels = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(channels, model_channels * mult, kernel=3,
                                                       **init)
                channels = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(channels, channels, down=True,
                                                          **block_kwargs)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    channels, model_channels * mult, attention=res in attn_resolutions,
                    **block_kwargs)
                channels = model_channels * mult
        skips = [block.out_channels for block in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(channels, channels, attention=True,
                                                         **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(channels, channels, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(channels, channels, up=True,
                                                        **block_kwargs)
            for idx in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    channels + skips.pop(), model_channels * mult,
                    attention=res in attn_resolutions, **block_kwargs)
                channels = model_channels * mult
        self.out_norm = GroupNorm(channels)
        self.out_conv = Conv2d(channels, out_channels, kernel=3, **init_zero)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None,
                augment_labels: Tensor | None = None) -> Tensor:
        """``(N, in_channels, H, W), (N,), (N, label_dim) -> (N, out_channels, H, W)``;
        ``class_labels`` are ignored (may be None) when ``label_dim == 0``, and so are
        ``augment_labels`` when ``augment_dim == 0``."""
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_dropped_labels(class_labels, self.label_dropout,
                                                       self.training))
        emb = F.silu(emb)

        skips = []
        for name, layer in self.enc.items():
            x = layer(x) if _role(name) == "conv" else layer(x, emb)
            skips.append(x)
        for name, layer in self.dec.items():
            if _role(name) == "block":
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


MODEL_TYPES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


# ---------------------------------------------------------------------------------------------
# Preconditionings (EDM, Table 1): D(x; sigma) = c_skip x + c_out F(c_in x; c_noise).


class Preconditioned(nn.Module):
    """A denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` around the U-Net
    ``model`` (``MODEL_TYPES[model_type]``, built with ``in_channels = out_channels =
    img_channels`` and ``model_kwargs``). Subclasses give the coefficients,
    :meth:`preconditioning`."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int,
                 use_fp16: bool, model_type: str, model_kwargs: dict[str, Any]) -> None:
        if model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {model_type!r}; known: "
                             f"{', '.join(MODEL_TYPES)}")
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.model = MODEL_TYPES[model_type](img_resolution=img_resolution,
                                             in_channels=img_channels,
                                             out_channels=img_channels, label_dim=label_dim,
                                             **model_kwargs)

    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` at the noise levels ``sigma``, each of its
        shape."""
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None,
                force_fp32: bool = False, augment_labels: Tensor | None = None) -> Tensor:
        """The denoised ``D(x; sigma)``: ``(N, C, H, W) -> (N, C, H, W)`` in float32.

        ``sigma`` is a scalar or ``(N,)``; ``class_labels`` ``(N, label_dim)``, default all
        zeros (unconditional) when ``label_dim > 0``, ignored otherwise. ``force_fp32`` is
        accepted for EDM's signature; the computation is always float32.
        """
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            labels = None
        elif class_labels is None:
            labels = torch.zeros(1, self.label_dim, device=x.device)
        else:
            labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        f = self.model(c_in * x, c_noise.flatten(), labels, augment_labels=augment_labels)
        return c_skip * x + c_out * f.to(torch.float32)


class VPPrecond(Preconditioned):
    """Variance-preserving preconditioning (Song et al. 2021's VP SDE; EDM, Table 1).

    Noise schedule ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` for
    ``t in [epsilon_t, 1]`` (so ``sigma_min = sigma(epsilon_t)``, ``sigma_max = sigma(1)``), and

        c_skip = 1,  c_out = -sigma,  c_in = 1 / sqrt(sigma^2 + 1),
        c_noise = (M - 1) sigma^-1(sigma).
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, beta_d: float = 19.9, beta_min: float = 0.1,
                 M: int = 1000, epsilon_t: float = 1e-5, model_type: str = "SongUNet",
                 **model_kwargs: Any) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type,
                         model_kwargs)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t: Tensor | float) -> Tensor:
        """``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: Tensor | float) -> Tensor:
        """``t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d``,
        the inverse of :meth:`sigma`."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt()
                - self.beta_min) / self.beta_d

    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(),
                (self.M - 1) * self.sigma_inv(sigma))


class VEPrecond(Preconditioned):
    """Variance-exploding preconditioning (Song et al. 2021's VE SDE; EDM, Table 1)::

        c_skip = 1,  c_out = sigma,  c_in = 1,  c_noise = log(sigma / 2).
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, sigma_min: float = 0.02, sigma_max: float = 100,
                 model_type: str = "SongUNet", **model_kwargs: Any) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type,
                         model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


class EDMPrecond(Preconditioned):
    """EDM's own preconditioning (EDM, Table 1, with ``sigma_data`` the data's standard
    deviation)::

        c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
        c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
        c_in = 1 / sqrt(sigma^2 + sigma_data^2),  c_noise = log(sigma) / 4.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, sigma_min: float = 0, sigma_max: float = float("inf"),
                 sigma_data: float = 0.5, model_type: str = "DhariwalUNet",
                 **model_kwargs: Any) -> None:
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type,
                         model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data

    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return edm_preconditioning(sigma, self.sigma_data)


PRECONDITIONINGS: dict[str, type[Preconditioned]] = {
    "VPPrecond": VPPrecond, "VEPrecond": VEPrecond, "EDMPrecond": EDMPrecond}


def default_model_type(precond: type[Preconditioned]) -> str:
    """The ``model_type`` a preconditioning builds when none is given."""
    return inspect.signature(precond).parameters["model_type"].default
