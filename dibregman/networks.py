"""Networks: EDM preconditioning around MLPs (vector data) and a small U-Net (images).

Every score model is a denoiser ``D(x, sigma)`` with EDM's preconditioning (Karras et al. 2022,
arXiv 2206.00364, Table 1):

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise),
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4.

``F`` is any module called as ``F(x_in, c_noise, labels)``: :class:`MLPNet` or :class:`UNet`.
``labels`` are one-hot class rows ``(B, C)`` for a class-conditional network (``label_dim = C``;
:mod:`dibregman.labels`), text embeddings ``(B, E)`` (or token states ``(B, L, E)``, pooled by
their mean) for a text-conditional one (``label_dim = E``), None for an unconditional one: a
label embedding ``W_y y`` is added to the noise embedding (EDM's ``map_label``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dibregman.noise import expand_sigma


def mlp(in_features: int, out_features: int, hidden: int, depth: int) -> nn.Sequential:
    """``depth`` hidden SiLU layers of width ``hidden``; the output layer is linear."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def init_parameters(module: nn.Module, rng: torch.Generator, zero_last: bool = False) -> None:
    """Seeded re-initialisation of every ``nn.Linear`` and ``nn.Conv2d`` (PyTorch's scheme),
    then of every :class:`FourierFeatures`' frequencies.

    The engine touches no global RNG: this replaces the default initialisation with the same
    distribution drawn from ``rng``. ``zero_last`` zeroes the final layer so that a
    preconditioned denoiser starts as ``c_skip x`` (the Gaussian optimum) and a ratio network
    starts at ``log r = 0``.
    """
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        for layer in layers:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=rng)
            if layer.bias is not None:
                fan_in = layer.weight[0].numel()
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(layer.bias, -bound, bound, generator=rng)
        if zero_last:
            layers[-1].weight.zero_()
            if layers[-1].bias is not None:
                layers[-1].bias.zero_()
    for features in (m for m in module.modules() if isinstance(m, FourierFeatures)):
        features.reset(rng)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * source`` for every parameter, in one
    multi-tensor kernel (one launch for the whole network instead of one per tensor)."""
    averaged, live = list(target.parameters()), list(source.parameters())
    if len(averaged) != len(live):
        raise ValueError(f"EMA of {len(live)} parameters into {len(averaged)}")
    torch._foreach_lerp_(averaged, live, 1 - decay)


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of ``c_noise``: ``(B,) -> (B, 2 * n_frequencies)``."""

    def __init__(self, n_frequencies: int = 8) -> None:
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies) / 2)

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class LabelEmbedding(nn.Module):
    """``W_y y`` of labels ``y: (B, C)`` (one-hot classes or text embeddings) -> ``(B, emb_dim)``;
    token states ``(B, L, C)`` are averaged over ``L`` first. With ``label_dim = 0`` an
    unconditional network's stand-in that gives 0 and refuses labels.

    Raises (in ``forward``):
        ValueError: labels given to an unconditional network, or none to a conditional one.
    """

    def __init__(self, label_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.label_dim = label_dim
        self.linear = nn.Linear(label_dim, emb_dim, bias=False) if label_dim else None

    def forward(self, labels: Tensor | None) -> Tensor | float:
        if self.linear is None:
            if labels is not None:
                raise ValueError("this network is unconditional (label_dim 0); call it "
                                 "without labels")
            return 0.0
        if labels is None or labels.shape[-1] != self.label_dim:
            got = "none" if labels is None else f"shape {tuple(labels.shape)}"
            raise ValueError(f"this network is conditional: it needs labels "
                             f"(B, {self.label_dim}) or (B, L, {self.label_dim}), got {got}")
        if labels.ndim == 3:
            labels = labels.mean(dim=1)
        return self.linear(labels.to(self.linear.weight.dtype))


class FourierFeatures(nn.Module):
    """Random Fourier features ``phi(x) = [x, sin(x B), cos(x B)]`` (Tancik et al. 2020,
    arXiv 2006.10739): ``(N, d) -> (N, d + 2 m)``.

    An MLP on ``x`` alone learns steep functions slowly (its spectral bias): a student's jumps
    between well-separated modes, a ratio's edges around them. ``B: (d, m)`` has
    ``N(0, scale^2 / d)`` entries, so for inputs of unit scale per coordinate every projection
    ``x . b`` has standard deviation ``scale`` whatever ``d``; it is a buffer (checkpoints carry
    it) drawn by :func:`init_parameters`. ``m = 0`` gives ``phi(x) = x``.

    Args:
        dim: ``d``.
        count: ``m``.
        scale: the projections' standard deviation for unit-scale inputs.
    """

    def __init__(self, dim: int, count: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("frequencies", torch.zeros(dim, count))

    @property
    def out_features(self) -> int:
        return self.frequencies.shape[0] + 2 * self.frequencies.shape[1]

    def reset(self, rng: torch.Generator) -> None:
        """Draw ``B`` from ``rng`` (nothing to draw when ``m = 0``)."""
        dim, count = self.frequencies.shape
        if count:
            self.frequencies.copy_(self.scale / math.sqrt(dim) * torch.randn(
                dim, count, generator=rng).to(self.frequencies.device))

    def forward(self, x: Tensor) -> Tensor:
        if not self.frequencies.shape[1]:
            return x
        angles = x @ self.frequencies
        return torch.cat([x, angles.sin(), angles.cos()], dim=1)


class MLPNet(nn.Module):
    """``F(x_in, c_noise)`` for vectors: an MLP on Fourier features of the input
    (:class:`FourierFeatures`; none by default) and a noise-level embedding (unconditional:
    ``labels`` must be None).

    ``x_in: (B, d)``, ``c_noise: (B,)`` -> ``(B, out_features)``.
    """

    def __init__(self, dim: int, out_features: int, hidden: int, depth: int,
                 fourier_features: int = 0, fourier_scale: float = 1.0) -> None:
        super().__init__()
        self.embedding = NoiseEmbedding()
        self.features = FourierFeatures(dim, fourier_features, fourier_scale)
        self.net = mlp(self.features.out_features + 2 * len(self.embedding.frequencies),
                       out_features, hidden, depth)

    def forward(self, x_in: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is not None:
            raise ValueError("MLPNet is unconditional; call it without labels")
        return self.net(torch.cat([self.features(x_in), self.embedding(c_noise)], dim=1))


class GroupNorm(nn.GroupNorm):
    """GroupNorm in the activations' own dtype (8 groups or fewer, as the width allows).

    Autocast runs ``group_norm`` in fp32, so under bf16 every normalisation would cast its
    input up and leave an fp32 tensor for the elementwise ops and the cast back down that
    follow, a large share of a ``cifar10`` iteration on a GPU. As EDM does, the affine
    parameters are cast to the input's dtype instead; the kernel still accumulates the
    statistics in fp32. In fp32 this is exactly ``nn.GroupNorm``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(math.gcd(channels, 8), channels)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype),
                                            self.bias.to(x.dtype), self.eps)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the noise embedding as a per-channel scale and shift."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = GroupNorm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = GroupNorm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = nn.functional.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


class UNet(nn.Module):
    """A small U-Net ``F(x_in, c_noise)`` for images ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    One residual block per level on the way down, two on the way up (the second after the
    skip concatenation), stride-2 convolutions down and nearest-neighbour upsampling. ``H`` and
    ``W`` must be divisible by ``2 ** (len(channel_mult) - 1)``.

    Args:
        in_channels: image channels ``C``.
        channels: base width; level ``i`` has ``channels * channel_mult[i]``.
        channel_mult: width multipliers per resolution level.
        emb_dim: width of the noise (and label) embedding.
        label_dim: classes ``C`` of a class-conditional U-Net (0: unconditional).
    """

    def __init__(self, in_channels: int, channels: int = 64,
                 channel_mult: tuple[int, ...] = (1, 2), emb_dim: int = 128,
                 label_dim: int = 0) -> None:
        super().__init__()
        self.embedding = NoiseEmbedding(16)
        self.emb_mlp = nn.Sequential(nn.Linear(32, emb_dim), nn.SiLU(),
                                     nn.Linear(emb_dim, emb_dim))
        self.label_embedding = LabelEmbedding(label_dim, emb_dim)
        widths = [channels * m for m in channel_mult]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = widths[0]
        for level, width in enumerate(widths):
            self.down_blocks.append(ResBlock(previous, width, emb_dim))
            previous = width
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle = ResBlock(previous, previous, emb_dim)
        self.up_blocks = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            self.up_blocks.append(ResBlock(previous + width, width, emb_dim))
            previous = width
            if level > 0:
                self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                   nn.Conv2d(width, widths[level - 1], 3,
                                                             padding=1)))
                previous = widths[level - 1]
        self.out = nn.Sequential(GroupNorm(previous), nn.SiLU(),
                                 nn.Conv2d(previous, in_channels, 3, padding=1))

    def forward(self, x_in: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.emb_mlp(self.embedding(c_noise)) + self.label_embedding(labels)
        h = self.stem(x_in)
        skips = []
        for level, block in enumerate(self.down_blocks):
            h = block(h, emb)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = self.middle(h, emb)
        for index, block in enumerate(self.up_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if index < len(self.upsample):
                h = self.upsample[index](h)
        return self.out(h)


def edm_preconditioning(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM's coefficients (Karras et al. 2022, Table 1) at noise levels ``sigma`` (any shape),
    each of ``sigma``'s shape::

        c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
        c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4.

    The one definition: the project's denoisers and ratio networks and the imported EDM
    networks (:class:`dibregman.pretrained.edm_networks.EDMPrecond`) all read it.
    """
    variance = sigma**2 + sigma_data**2
    return (sigma_data**2 / variance, sigma * sigma_data / variance.sqrt(), 1 / variance.sqrt(),
            sigma.log() / 4)


class Denoiser(nn.Module):
    """An EDM-preconditioned denoiser ``D(x, sigma)`` around ``F`` (teacher, fake score).

    Args:
        net: ``F(x_in, c_noise, labels)`` with output shaped like its input.
        sigma_data: data standard deviation ``sd``.
    """

    def __init__(self, net: nn.Module, sigma_data: float) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        """``x: (B, *shape)``, ``sigma: (B,)``, ``labels: (B, C)`` one-hot or None ->
        ``(B, *shape)`` denoised."""
        c_skip, c_out, c_in, c_noise = edm_preconditioning(expand_sigma(sigma, x),
                                                           self.sigma_data)
        return c_skip * x + c_out * self.net(c_in * x, c_noise.reshape(-1), labels)


class ConvEncoder(nn.Module):
    """``(B, C, H, W), c_noise (B,), labels -> (B, 1)``: a small noise-conditioned CNN ratio
    head; with ``label_dim > 0`` also label-conditioned (one-hot ``(B, label_dim)``)."""

    def __init__(self, in_channels: int, width: int = 32, emb_dim: int = 64,
                 label_dim: int = 0) -> None:
        super().__init__()
        self.embedding = NoiseEmbedding(8)
        self.emb_mlp = nn.Sequential(nn.Linear(16, emb_dim), nn.SiLU())
        self.label_embedding = LabelEmbedding(label_dim, emb_dim)
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.block1 = ResBlock(width, width, emb_dim)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.block2 = ResBlock(2 * width, 2 * width, emb_dim)
        self.head = nn.Linear(2 * width, 1)

    def forward(self, x_in: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.emb_mlp(self.embedding(c_noise)) + self.label_embedding(labels)
        h = self.block2(self.down(self.block1(self.stem(x_in), emb)), emb)
        return self.head(nn.functional.silu(h).mean(dim=(2, 3)))


class RatioNetwork(nn.Module):
    """``(x_sigma, sigma) -> log r`` (one scalar per sample), a network of its own.

    The classifier's logit is ``-log r`` (teacher side is the positive class, docs/method.md
    §2). The input is scaled by ``c_in`` like a denoiser's, so every noise level sees unit-scale
    inputs.

    Args:
        net: ``F(x_in, c_noise) -> (B, 1)``: :class:`MLPNet` or :class:`ConvEncoder`.
        sigma_data: data standard deviation.
    """

    def __init__(self, net: nn.Module, sigma_data: float) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        """``x: (B, *shape)``, ``sigma: (B,)``, ``labels: (B, C)`` one-hot or None -> ``(B,)``
        raw log-ratio (before clamping)."""
        _, _, c_in, c_noise = edm_preconditioning(expand_sigma(sigma, x), self.sigma_data)
        return self.net(c_in * x, c_noise.reshape(-1), labels).squeeze(1)


class OneStepGenerator(nn.Module):
    """The vector student ``G(z) = sd * (z + MLP(phi(z)))`` for ``z ~ N(0, I_d)``.

    A residual map scaled to the data, so step 0 already has the data's scale and the MLP
    learns the transport. ``phi`` is :class:`FourierFeatures` of the latent (``phi(z) = z``
    with ``fourier_features = 0``): an MLP on ``z`` alone learns the steep transitions between
    well-separated modes slowly, so mass stays between them.

    Args:
        dim: ``d``.
        hidden, depth: the MLP's width and number of hidden layers.
        sigma_data: the data scale ``sd``.
        fourier_features: ``m`` (0: ``phi(z) = z``).
        fourier_scale: the projections' scale; ``B`` is drawn by :func:`init_parameters`.
    """

    def __init__(self, dim: int, hidden: int, depth: int, sigma_data: float,
                 fourier_features: int = 0, fourier_scale: float = 1.0) -> None:
        super().__init__()
        self.sigma_data = sigma_data
        self.features = FourierFeatures(dim, fourier_features, fourier_scale)
        self.net = mlp(self.features.out_features, dim, hidden, depth)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """``z: (B, d)`` -> ``(B, d)`` (unconditional: ``labels`` must be None)."""
        if labels is not None:
            raise ValueError("OneStepGenerator is unconditional; call it without labels")
        return self.sigma_data * (z + self.net(self.features(z)))


class DenoiserStudent(nn.Module):
    """The image student ``G(z) = D(sigma_init z, sigma_init)``, a denoiser copied from the
    teacher (DMD2), so that at step 0 it is the teacher's one-step prediction from pure noise.

    Args:
        denoiser: a trainable copy of the teacher's denoiser.
        sigma_init: the noise level the student denoises from (DMD2: 80).
    """

    def __init__(self, denoiser: Denoiser, sigma_init: float) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.sigma_init = sigma_init

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """``z: (B, C, H, W)`` standard normal, ``labels: (B, classes)`` one-hot for a
        class-conditional denoiser -> ``(B, C, H, W)`` samples."""
        sigma = torch.full((z.shape[0],), self.sigma_init, device=z.device, dtype=z.dtype)
        return self.denoiser(self.sigma_init * z, sigma, labels)
