"""
Training recipes for the testbed study's regressors: each a set of stage flags (model and
training) that sr_mean_train.py, sr_var_train.py, sr_pc_train.py and sr_quantile_train.py
take as a user would type them. `paper` is the study's first recipe (the mini run's network
at lr 1e-3, batch 16, linear decay); every other one changes it, and docs/testbed.md
("Regressors to the floor") tables what each measured. The study trains CHOSEN by default
and the others on request (--ablations).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Stage flags: the model's (a dict), the training's (a dict); an EMA kept beside, and which weights are scored."""

    model: dict
    train: dict
    ema: str = ""  # keep an EMA of the weights at this rate, saved as ema_{rate}_{step}.pt beside model{step}.pt
    score_ema: bool = False  # score (and give the variance model as its mean) the EMA instead of the weights
    note: str = ""

    def flags(self, kind):
        """The command-line flags for a stage of `kind` (residual only where the kind has it)."""
        model = dict(self.model)
        if kind not in ("mean", "quantile"):
            model.pop("residual", None)
        train = dict(self.train, **({"ema_rate": self.ema} if self.ema else {}))
        return [item for key, value in {**model, **train}.items() for item in (f"--{key}", str(value))]

    def weights(self, step):
        """The checkpoint file the study scores at `step`."""
        return self._ema_file(step) if self.score_ema else f"model{step:06d}.pt"

    def other_weights(self):
        """The same training's other weights, which the study scores as well: (tag, file at step), or None."""
        if not self.ema:
            return None
        if self.score_ema:
            return "raw", lambda step: f"model{step:06d}.pt"
        return f"ema {self.ema}", self._ema_file

    def _ema_file(self, step):
        return f"ema_{self.ema}_{step:06d}.pt"

    def with_(self, note, model=None, train=None, ema=None, score_ema=None):
        return Recipe({**self.model, **(model or {})}, {**self.train, **(train or {})},
                      self.ema if ema is None else ema, self.score_ema if score_ema is None else score_ema, note)


PAPER = Recipe(
    model=dict(attention_resolutions="16,8", model_channels=32, num_heads=4, num_res_blocks=1, resblock_updown=True,
               channel_mult="1,2,2"),
    train=dict(batch_size=16, lr=1e-3),
    note="the mini run's 32-channel UNet, AdamW lr 1e-3 decayed linearly to 0, batch 16",
)

RECIPES = {
    "paper": PAPER,
    "residual": PAPER.with_("the output added to the bilinear input", model=dict(residual=True)),
    "norm8": PAPER.with_("GroupNorm with 8 groups instead of 32 (32 groups on 32 channels is instance norm)",
                         model=dict(norm_groups=8)),
    "residual_norm8": PAPER.with_("residual and 8 groups", model=dict(residual=True, norm_groups=8)),
    "cosine": PAPER.with_("cosine decay after 100 warm-up steps", train=dict(lr_schedule="cosine",
                                                                             lr_warmup_steps=100)),
    "ema": PAPER.with_("scored on an EMA of the weights (rate 0.999)", ema="0.999", score_ema=True),
    "lr3e-4": PAPER.with_("lr 3e-4", train=dict(lr=3e-4)),
    "batch64": PAPER.with_("batch 64 (four times the images per step)", train=dict(batch_size=64)),
    "wide": PAPER.with_("64 channels", model=dict(model_channels=64)),
    "deep": PAPER.with_("2 residual blocks per level", model=dict(num_res_blocks=2)),
}
# An EMA at 0.999 still holds 0.999^1500 = 22% of the initial weights after the study's 1,500 steps: measured
# (docs/testbed.md, "Regressors to the floor"), its relative MSE was 5x the raw weights'. It is kept and scored
# beside them, not used.
RECIPES["combined"] = PAPER.with_("residual, 8 groups, cosine with 100 warm-up steps (an EMA 0.999 kept beside)",
                                  model=dict(residual=True, norm_groups=8),
                                  train=dict(lr_schedule="cosine", lr_warmup_steps=100), ema="0.999")
CHOSEN = "combined"
