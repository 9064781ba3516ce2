"""
Mixed-precision training for the one training loop: an fp16 model torso with fp32 master
weights and dynamic loss scaling (as guided-diffusion's MixedPrecisionTrainer, without
flattening the parameters). The model converts its own layers (`convert_to_fp16`).
"""

import torch as th

from . import logger

INITIAL_LOG_LOSS_SCALE = 20.0


class MixedPrecisionTrainer:
    """
    Owns the parameters the optimizer sees. With use_fp16, those are fp32 copies of the
    model's (partly fp16) parameters; gradients are computed on `loss * 2**lg_loss_scale`,
    unscaled into the masters, and a step with non-finite gradients is skipped while the
    scale is halved. Without fp16 the model's own parameters are used directly.
    """

    def __init__(
        self,
        *,
        model,
        use_fp16=False,
        fp16_scale_growth=1e-3,
        initial_lg_loss_scale=INITIAL_LOG_LOSS_SCALE,
    ):
        self.model = model
        self.use_fp16 = use_fp16
        self.fp16_scale_growth = fp16_scale_growth
        self.lg_loss_scale = initial_lg_loss_scale
        self.param_names = [name for name, _ in model.named_parameters()]
        self.model_params = list(model.parameters())
        self.master_params = self.model_params
        if use_fp16:
            self.master_params = [
                p.detach().float().clone().requires_grad_(True) for p in self.model_params
            ]
            model.convert_to_fp16()
            # convert_to_fp16 rebinds .data, so collect the (same) Parameter objects again.
            self.model_params = list(model.parameters())

    def zero_grad(self):
        for p in self.model_params:
            p.grad = None

    def backward(self, loss):
        if self.use_fp16:
            (loss * 2 ** self.lg_loss_scale).backward()
        else:
            loss.backward()

    def optimize(self, opt):
        """Take an optimizer step; returns False when an fp16 step was skipped."""
        if not self.use_fp16:
            opt.step()
            return True
        grads = [
            p.grad.float() if p.grad is not None else th.zeros_like(m)
            for p, m in zip(self.model_params, self.master_params)
        ]
        norms = th._foreach_norm(grads)
        if not th.isfinite(th.stack(norms)).all():
            self.lg_loss_scale -= 1
            logger.log(f"found NaN/inf gradients, decreased lg_loss_scale to {self.lg_loss_scale}")
            self.zero_grad()
            return False
        scale = 2.0 ** -self.lg_loss_scale
        for m, g in zip(self.master_params, grads):
            m.grad = g.mul_(scale)
        opt.step()
        with th.no_grad():
            for p, m in zip(self.model_params, self.master_params):
                p.copy_(m)
        self.lg_loss_scale += self.fp16_scale_growth
        logger.logkv_mean("lg_loss_scale", self.lg_loss_scale)
        return True

    def grad_norm(self):
        grads = [p.grad for p in self.master_params if p.grad is not None]
        if not grads:
            return 0.0
        return th.linalg.vector_norm(th.stack(th._foreach_norm(grads))).item()

    def master_params_to_state_dict(self, params=None):
        """The model's state_dict with every parameter taken from the fp32 masters (or from `params`, an EMA)."""
        state_dict = self.model.state_dict()
        for name, m in zip(self.param_names, self.master_params if params is None else params):
            state_dict[name] = m.detach().float().clone()
        return state_dict

    def load_state_dict(self, state_dict):
        """Load fp32 weights into the masters and the model."""
        with th.no_grad():
            for name, p, m in zip(self.param_names, self.model_params, self.master_params):
                p.copy_(state_dict[name])
                if m is not p:
                    m.copy_(state_dict[name])
        buffers = {k: v for k, v in state_dict.items() if k not in set(self.param_names)}
        if buffers:
            self.model.load_state_dict(buffers, strict=False)
