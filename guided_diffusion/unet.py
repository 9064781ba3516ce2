"""
The UNets: guided-diffusion's `UNetModel` / `SuperResModel` (timestep-conditioned, for the
DDPM-SR upsampler) and the paper's plain mean / variance UNets (the same trunk without a
timestep input). Parameter names follow guided-diffusion exactly, so its checkpoints and
the original code's checkpoints load strictly.
"""

import math
from abc import abstractmethod

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from .fp16_util import convert_module_to_f16, convert_module_to_f32
from .nn import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)


class TimestepBlock(nn.Module):
    """Any module whose forward() takes timestep embeddings as a second argument."""

    @abstractmethod
    def forward(self, x, emb):
        """Apply the module to `x` given `emb` timestep embeddings."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequential module that passes timestep embeddings to the children that take them."""

    def forward(self, x, emb=None):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling with an optional 3x3 convolution."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x):
        assert x.shape[1] == self.channels
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.use_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    """2x downsampling by a strided 3x3 convolution, or by average pooling."""

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            assert self.channels == self.out_channels
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.op(x)


class ResBlock(TimestepBlock):
    """
    A residual block that can change the number of channels and resample.

    :param emb_channels: width of the timestep embedding; None builds the block of the
        paper's plain UNets, which has no embedding input (and no `emb_layers`).
    :param use_conv: with a new `out_channels`, use a 3x3 instead of a 1x1 skip convolution.
    :param use_scale_shift_norm: apply the embedding as a FiLM scale/shift after the norm.
    :param up/down: resample inside the block (nearest up / average-pool down).
    """

    def __init__(
        self,
        channels,
        emb_channels,
        dropout,
        out_channels=None,
        use_conv=False,
        use_scale_shift_norm=False,
        dims=2,
        use_checkpoint=False,
        up=False,
        down=False,
    ):
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )

        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        if emb_channels is not None:
            self.emb_layers = nn.Sequential(
                nn.SiLU(),
                linear(
                    emb_channels,
                    2 * self.out_channels if use_scale_shift_norm else self.out_channels,
                ),
            )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )

        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x, emb=None):
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x, emb):
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_rest(x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = in_conv(h)
        else:
            h = self.in_layers(x)

        if self.emb_channels is None:
            h = self.out_layers(h)
        else:
            emb_out = self.emb_layers(emb).type(h.dtype)
            while len(emb_out.shape) < len(h.shape):
                emb_out = emb_out[..., None]
            if self.use_scale_shift_norm:
                out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
                scale, shift = th.chunk(emb_out, 2, dim=1)
                h = out_rest(out_norm(h) * (1 + scale) + shift)
            else:
                h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """
    Self-attention over all spatial positions.

    Unlike guided-diffusion, which always recomputes attention in the backward pass, the
    block checkpoints only when `use_checkpoint` is set.
    """

    def __init__(
        self,
        channels,
        num_heads=1,
        num_head_channels=-1,
        use_checkpoint=False,
        use_new_attention_order=False,
    ):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            assert channels % num_head_channels == 0, (
                f"q,k,v channels {channels} is not divisible by num_head_channels {num_head_channels}"
            )
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        if use_new_attention_order:
            self.attention = QKVAttention(self.num_heads)  # split qkv, then heads
        else:
            self.attention = QKVAttentionLegacy(self.num_heads)  # split heads, then qkv
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x):
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        h = self.proj_out(self.attention(qkv))
        return (x + h).reshape(b, c, *spatial)


def _attend(q, k, v, use_sdpa):
    """
    Attention for q, k, v of shape [B, H, C, T] (channels before positions, as the 1x1
    convolutions lay them out); returns [B, H, C, T].
    """
    if use_sdpa:
        # SDPA's fused kernels (CPU flash, CUDA flash/memory-efficient) need a contiguous last
        # dim; transposed views would send it to the math fallback (2x slower on a CPU at small sizes).
        q, k, v = (t.transpose(-1, -2).contiguous() for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).transpose(-1, -2)
    # guided-diffusion's einsum form: scaling q and k separately is more stable in fp16.
    scale = 1 / math.sqrt(math.sqrt(q.shape[-2]))
    weight = th.einsum("bhct,bhcs->bhts", q * scale, k * scale)
    weight = th.softmax(weight.float(), dim=-1).type(weight.dtype)
    return th.einsum("bhts,bhcs->bhct", weight, v)


class QKVAttentionLegacy(nn.Module):
    """
    QKV attention with guided-diffusion's legacy layout: the qkv channels are grouped by
    head first, then split into q, k, v. `use_sdpa` (class-wide default, settable per
    module with `set_attention_backend`) picks F.scaled_dot_product_attention or the
    original einsum computation; both give the same numbers up to float rounding.
    """

    use_sdpa = True

    def __init__(self, n_heads):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv):
        """:param qkv: [N x (H * 3 * C) x T]; returns [N x (H * C) x T]."""
        bs, width, length = qkv.shape
        assert width % (3 * self.n_heads) == 0
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs, self.n_heads, 3 * ch, length).split(ch, dim=2)
        return _attend(q, k, v, self.use_sdpa).reshape(bs, -1, length)


class QKVAttention(nn.Module):
    """QKV attention that splits q, k, v first, then heads (`use_new_attention_order`)."""

    use_sdpa = True

    def __init__(self, n_heads):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv):
        """:param qkv: [N x (3 * H * C) x T]; returns [N x (H * C) x T]."""
        bs, width, length = qkv.shape
        assert width % (3 * self.n_heads) == 0
        ch = width // (3 * self.n_heads)
        q, k, v = (t.reshape(bs, self.n_heads, ch, length) for t in qkv.chunk(3, dim=1))
        return _attend(q, k, v, self.use_sdpa).reshape(bs, -1, length)


def set_attention_backend(model, backend):
    """Switch every attention layer of `model` to "sdpa" or the legacy "einsum" form."""
    if backend not in ("sdpa", "einsum"):
        raise ValueError(f"unknown attention backend {backend!r} (sdpa | einsum)")
    for module in model.modules():
        if isinstance(module, (QKVAttention, QKVAttentionLegacy)):
            module.use_sdpa = backend == "sdpa"
    return model


class UNetModel(nn.Module):
    """
    The full UNet with attention and (optionally) timestep embedding.

    :param attention_resolutions: downsample rates (1, 2, 4, ...) at which attention is used.
    :param channel_mult: channel multiplier for each level of the UNet.
    :param conv_resample: use learned convolutions for up/downsampling.
    :param num_classes: if set, the model is class-conditional with this many classes.
    :param use_checkpoint: use gradient checkpointing to reduce memory usage.
    :param num_heads / num_head_channels: attention heads, or a fixed width per head.
    :param num_heads_upsample: heads in the decoder (-1: same as num_heads).
    :param use_scale_shift_norm: FiLM-like conditioning of the residual blocks.
    :param resblock_updown: use residual blocks for up/downsampling.
    :param use_new_attention_order: split q, k, v before heads.
    :param use_timestep: False builds the paper's plain UNet: no time embedding, forward(x).
    """

    def __init__(
        self,
        image_size,
        in_channels,
        model_channels,
        out_channels,
        num_res_blocks,
        attention_resolutions,
        dropout=0,
        channel_mult=(1, 2, 4, 8),
        conv_resample=True,
        dims=2,
        num_classes=None,
        use_checkpoint=False,
        use_fp16=False,
        num_heads=1,
        num_head_channels=-1,
        num_heads_upsample=-1,
        use_scale_shift_norm=False,
        resblock_updown=False,
        use_new_attention_order=False,
        use_timestep=True,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        if num_classes is not None and not use_timestep:
            raise ValueError("class conditioning needs the timestep embedding")

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.use_fp16 = use_fp16
        # The trunk runs in float32 until convert_to_fp16() is called.
        self.dtype = th.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample
        self.use_timestep = use_timestep

        time_embed_dim = model_channels * 4 if use_timestep else None
        if use_timestep:
            self.time_embed = nn.Sequential(
                linear(model_channels, time_embed_dim),
                nn.SiLU(),
                linear(time_embed_dim, time_embed_dim),
            )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        def res_block(ch_in, ch_out, **kwargs):
            return ResBlock(
                ch_in,
                time_embed_dim,
                dropout,
                out_channels=ch_out,
                dims=dims,
                use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm,
                **kwargs,
            )

        def attention_block(ch, heads):
            return AttentionBlock(
                ch,
                use_checkpoint=use_checkpoint,
                num_heads=heads,
                num_head_channels=num_head_channels,
                use_new_attention_order=use_new_attention_order,
            )

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))]
        )
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attention_block(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(
                    TimestepEmbedSequential(
                        res_block(ch, ch, down=True)
                        if resblock_updown
                        else Downsample(ch, conv_resample, dims=dims, out_channels=ch)
                    )
                )
                input_block_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            res_block(ch, ch), attention_block(ch, num_heads), res_block(ch, ch)
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [res_block(ch + ich, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attention_block(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(
                        res_block(ch, ch, up=True)
                        if resblock_updown
                        else Upsample(ch, conv_resample, dims=dims, out_channels=ch)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1)),
        )

    def convert_to_fp16(self):
        """Convert the torso of the model to float16 (norms and the output head stay fp32)."""
        self.input_blocks.apply(convert_module_to_f16)
        self.middle_block.apply(convert_module_to_f16)
        self.output_blocks.apply(convert_module_to_f16)
        self.dtype = th.float16

    def convert_to_fp32(self):
        """Convert the torso of the model back to float32."""
        self.input_blocks.apply(convert_module_to_f32)
        self.middle_block.apply(convert_module_to_f32)
        self.output_blocks.apply(convert_module_to_f32)
        self.dtype = th.float32

    def forward(self, x, timesteps=None, y=None):
        """
        :param x: an [N x C x ...] Tensor of inputs.
        :param timesteps: a 1-D batch of timesteps (unused by the plain UNet).
        :param y: an [N] Tensor of labels, if class-conditional.
        :return: an [N x C x ...] Tensor of outputs.
        """
        assert (y is not None) == (self.num_classes is not None), (
            "must specify y if and only if the model is class-conditional"
        )
        emb = None
        if self.use_timestep:
            emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            assert y.shape == (x.shape[0],)
            emb = emb + self.label_emb(y)

        hs = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(th.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


class SuperResModel(UNetModel):
    """
    A UNet that performs super-resolution: the `low_res` kwarg is upsampled bilinearly to
    the size of `x` and concatenated to it as extra input channels.
    """

    def __init__(self, image_size, in_channels, *args, **kwargs):
        super().__init__(image_size, in_channels * 2, *args, **kwargs)

    def forward(self, x, timesteps, low_res=None, **kwargs):
        _, _, new_height, new_width = x.shape
        upsampled = F.interpolate(low_res, (new_height, new_width), mode="bilinear")
        x = th.cat([x, upsampled], dim=1)
        return super().forward(x, timesteps, **kwargs)
