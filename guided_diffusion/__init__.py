"""
The diffusion library: UNets, Gaussian diffusion, respacing, losses and samplers with the
public API of OpenAI's guided-diffusion (the same module, function, class and keyword names,
and checkpoints that load strictly: tests/test_guided_diffusion_exact.py), written for this
project. Upstream's modules are here under their names; what differs, on purpose:

- `unet.py`: attention through `F.scaled_dot_product_attention` (`set_attention_backend`
  switches to upstream's einsum for comparison); `UNetModel(use_timestep=False)` drops the
  timestep embedding, for the paper's plain UNets (`sr_var/networks.py`).
- `samplers.py` (new): DDIM, DPM-Solver++(2M) and its SDE form, analytic DDIM, beside
  upstream's ancestral loop, as small pure functions over one network call per step.
- `respace.py`: `logsnrN` respacing (N steps uniform in log-SNR) beside upstream's.
- `script_util.py`: `channel_mult` in the SR defaults, `diffusion_from_flags` (one-line errors
  for an unknown schedule or respacing, and for a linear schedule of 20 steps or fewer, whose
  last beta reaches 1), and each defaults function's numeric rules beside it.
- `fp16_util.py`: the layer conversions only; `MixedPrecisionTrainer` is the run kit's
  (without upstream's flattened master parameters), re-exported here.
- `logger.py`, `dist_util.py`: the run kit's, re-exported under upstream's names (one logger
  and one process group for every stage of both experiments).
- `resample.py`: upstream's timestep samplers (`uniform`, `loss-second-moment`), drawing from a
  given random stream, with the loss history as a ring buffer (the same last 10 losses, no
  Python loop over the batch) that `state_dict()` saves with the optimizer state.
- Not here: upstream's `image_datasets.py` and `train_util.py` (the stages' data loaders are in
  `sr_var/data.py`; the one training loop, with upstream's EMA of the weights, in
  `runkit/training.py`; the upsampler's training, `super_res_train.py`, in
  `sr_var/ddpm_training.py` behind `sr_ddpm_train.py`).

It imports the run kit and nothing else of the project.
"""
