"""
The one training loop of the project (MNIST classifiers, SR mean, variance and PC models, the
DDPM-SR upsampler): microbatch gradient accumulation, fp16 with loss scaling, Adam/AdamW, linear
lr annealing, stopping by step count or wall time, atomic checkpoints every
`save_interval`, resuming with optimizer state, and DDP when launched under mpiexec.
SIGTERM / SIGUSR1 (cluster pre-emption) and --run_time end the loop with a checkpoint and
raise `Preempted` (exit status 75): the run is not finished, and the same command with
`--resume_checkpoint latest` continues it. One live run per `model_save_dir` (a lock).
A loss that turns NaN or inf ends the run in one line with the last finite step saved; a
resumed run takes the --lr, --weight_decay and --batch_size given now over what its checkpoint
ran with, and logs a change. Optionally (`ema_rate`, off by default) it keeps exponential moving
averages of the fp32 master weights, saved beside each checkpoint as ema_{rate}_{step:06d}.pt
and resumed from there, as guided-diffusion's TrainLoop does.
"""

import contextlib
import glob
import math
import os
import re
import time

import torch as th
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from . import dist_util, logger
from .errors import UserError
from .fileio import check_state_dict, load_state_dict, save_torch, torch_load, torch_load_error
from .mixed_precision import INITIAL_LOG_LOSS_SCALE, MixedPrecisionTrainer
from .paths import lock_folder
from .run import Preempted, stop_requested, stop_signals

CHECKPOINT_RE = re.compile(r"^model(\d+)\.pt$")
LR_SCHEDULES = ("linear", "cosine")
EMA_CHECKPOINT_RE = re.compile(r"^ema_(.+)_(\d+)\.pt$")


def ema_checkpoint_name(rate, step):
    """guided-diffusion's name of an EMA checkpoint: ema_0.9999_000100.pt."""
    return f"ema_{rate}_{step:06d}.pt"


def parse_resume_step_from_filename(filename):
    """modelNNNNNN.pt -> NNNNNN (0 for other names)."""
    m = CHECKPOINT_RE.match(os.path.basename(filename))
    return int(m.group(1)) if m else 0


def list_checkpoints(model_save_dir):
    """The model checkpoints in a directory, sorted by step."""
    paths = glob.glob(os.path.join(model_save_dir, "model*.pt"))
    found = [(parse_resume_step_from_filename(p), os.path.basename(p)) for p in paths
             if CHECKPOINT_RE.match(os.path.basename(p))]
    return [name for _, name in sorted(found)]


def resolve_resume_checkpoint(model_save_dir, resume_checkpoint):
    """
    The checkpoint file name to resume from ("" to start fresh). "latest" picks the newest.
    Starting fresh over existing checkpoints is refused, so that no work is overwritten.
    """
    existing = list_checkpoints(model_save_dir) if os.path.isdir(model_save_dir) else []
    if resume_checkpoint == "latest":
        return existing[-1] if existing else ""
    if resume_checkpoint:
        if os.sep in resume_checkpoint or "/" in resume_checkpoint:
            raise UserError(f"--resume_checkpoint {resume_checkpoint!r} should be a file name inside "
                            f"--model_save_dir {model_save_dir!r} (for example model002000.pt)")
        ema = EMA_CHECKPOINT_RE.match(resume_checkpoint)
        if ema:  # its step would be read as 0, and the run would write over the later checkpoints
            raise UserError(f"--resume_checkpoint {resume_checkpoint!r} is an EMA of the weights; resume from "
                            f"model{ema.group(2)}.pt (its EMA files are read beside it)")
        if not os.path.isfile(os.path.join(model_save_dir, resume_checkpoint)):
            hint = f"; checkpoints there: {', '.join(existing[-3:])}" if existing else ""
            raise UserError(f"--resume_checkpoint {resume_checkpoint!r} is not in --model_save_dir "
                            f"{model_save_dir!r}{hint}")
        return resume_checkpoint
    if existing:
        raise UserError(f"--model_save_dir {model_save_dir!r} already holds checkpoints up to {existing[-1]}; "
                        f"pass --resume_checkpoint {existing[-1]} (or latest) to continue, "
                        f"or choose another --model_save_dir")
    return ""


class NonFiniteLoss(Exception):
    """A training step whose loss is NaN or inf (raised before the weights are updated)."""


class TrainLoop:
    """
    :param model: the network (its parameters are trained).
    :param data: an iterator of batches, each a tuple of tensors with the batch first.
    :param loss_fn: loss_fn(model, *microbatch) -> (mean loss over the microbatch, output).
    :param microbatch: split each batch into pieces of this size and accumulate (<= 0: off).
    :param optimizer: "adamw" (the SR models) or "adam" (the MNIST classifier).
    :param lr_anneal_steps: decay the lr to 0 over this many steps, then stop (0: off).
    :param lr_schedule: how it decays: "linear" (guided-diffusion's) or "cosine".
    :param warmup_steps: ramp the lr up linearly over the first this many steps (0: off).
    :param max_step: stop after this many optimizer steps.
    :param run_time: stop (with a checkpoint) after this many hours (<= 0: off).
    :param resume_checkpoint: a file name in model_save_dir, "latest", or "".
    :param image_fn: image_fn(step, microbatch, output), called every image_interval steps.
    :param on_save: on_save(step), called after each checkpoint (evaluations).
    :param debug_mode: also log the gradient norm and the peak GPU memory.
    :param flag_names: the model's shape flags, for the line that names a checkpoint which does not fit
        (fileio.likely_flag).
    :param ema_rate: rates of exponential moving averages of the weights to keep (() : none), each
        saved as ema_{rate}_{step:06d}.pt and resumed from that file.
    :param extra_state: an object with state_dict() / load_state_dict(state) whose state travels in
        the optimizer file (a timestep sampler's loss history); load_state_dict raises ValueError for
        a state that does not fit.
    :param log_fn: log_fn(), called at every log_interval before the values are written (a stage's
        own logger.logkv values).
    """

    def __init__(
        self,
        *,
        model,
        data,
        loss_fn,
        batch_size,
        lr,
        model_save_dir,
        microbatch=-1,
        weight_decay=0.0,
        optimizer="adamw",
        lr_anneal_steps=0,
        lr_schedule="linear",
        warmup_steps=0,
        use_fp16=False,
        fp16_scale_growth=1e-3,
        initial_lg_loss_scale=INITIAL_LOG_LOSS_SCALE,
        max_step=100000000,
        run_time=-1.0,
        resume_checkpoint="",
        log_interval=10,
        save_interval=10000,
        image_interval=0,
        image_fn=None,
        on_save=None,
        progress=True,
        debug_mode=False,
        flag_names="model flags",
        ema_rate=(),
        extra_state=None,
        log_fn=None,
    ):
        self.model = model
        self.data = data
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.microbatch = microbatch if microbatch > 0 else batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_anneal_steps = lr_anneal_steps
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.warmup_steps = warmup_steps
        self.max_step = max_step
        self.run_time = run_time
        self.model_save_dir = model_save_dir
        self.log_interval = log_interval
        self.save_interval = save_interval
        self.image_interval = image_interval
        self.image_fn = image_fn
        self.on_save = on_save
        self.progress = progress
        self.debug_mode = debug_mode
        self.extra_state = extra_state
        self.log_fn = log_fn
        self.device = dist_util.dev()

        if use_fp16 and self.device.type != "cuda":
            logger.warn_once("--use_fp16 True needs a GPU; training in fp32 on the CPU")
            use_fp16 = False
        resume_checkpoint = resolve_resume_checkpoint(model_save_dir, resume_checkpoint)
        self.step = parse_resume_step_from_filename(resume_checkpoint)

        self.model.to(self.device)
        self.mp_trainer = MixedPrecisionTrainer(
            model=self.model,
            use_fp16=use_fp16,
            fp16_scale_growth=fp16_scale_growth,
            initial_lg_loss_scale=initial_lg_loss_scale,
        )
        if resume_checkpoint:
            path = os.path.join(model_save_dir, resume_checkpoint)
            logger.log(f"resuming from {path} (step {self.step})")
            state_dict = load_state_dict(path, "resume_checkpoint")
            check_state_dict(self.model, state_dict, path, "resume_checkpoint", flag_names)
            self.mp_trainer.load_state_dict(state_dict)
        dist_util.sync_params(self.mp_trainer.model_params)
        if self.mp_trainer.master_params is not self.mp_trainer.model_params:
            # fp16: the fp32 masters were copied from each rank's own weights before the broadcast
            dist_util.sync_params(self.mp_trainer.master_params)

        self.ema_rate = tuple(float(rate) for rate in ema_rate)
        self.ema_params = [[p.detach().clone() for p in self.mp_trainer.master_params] for _ in self.ema_rate]
        if resume_checkpoint and self.ema_rate:
            self._load_ema_params(flag_names)

        opt_cls = {"adamw": th.optim.AdamW, "adam": th.optim.Adam}[optimizer]
        # fused kernels exist for CPU and CUDA float32 parameters; they are much faster
        # for many small tensors.
        self.opt = opt_cls(self.mp_trainer.master_params, lr=lr, weight_decay=weight_decay, fused=True)
        if resume_checkpoint:
            self._load_optimizer_state()
        if dist_util.get_rank() == 0:  # after every check: a refused run leaves the folder as it was
            lock_folder(model_save_dir, "model_save_dir")

        self.use_ddp = dist_util.get_world_size() > 1
        if self.use_ddp:
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.ddp_model = DDP(self.model, device_ids=device_ids, broadcast_buffers=False,
                                 bucket_cap_mb=128)
        else:
            self.ddp_model = self.model

        self._loss_sum = None
        self._loss_count = 0

    # -- checkpoints ------------------------------------------------------------------------

    def _load_ema_params(self, flag_names):
        """Each EMA from its file of the resumed step; one that is missing starts from the checkpoint's weights."""
        for rate, params in zip(self.ema_rate, self.ema_params):
            path = os.path.join(self.model_save_dir, ema_checkpoint_name(rate, self.step))
            if not os.path.exists(path):
                logger.log(f"no EMA file {path}; the EMA at rate {rate} starts from the checkpoint's weights")
                continue
            state_dict = load_state_dict(path, "resume_checkpoint")
            check_state_dict(self.model, state_dict, path, "resume_checkpoint", flag_names)
            with th.no_grad():
                for name, p in zip(self.mp_trainer.param_names, params):
                    p.copy_(state_dict[name])
            dist_util.sync_params(params)

    def _load_optimizer_state(self):
        path = os.path.join(self.model_save_dir, f"opt{self.step:06d}.pt")
        if not os.path.exists(path):
            logger.warn_once(f"no optimizer state {path}; resuming with a fresh optimizer")
            return
        try:
            state = torch_load(path)
        except Exception as e:  # a corrupt or foreign file
            raise UserError(f"optimizer state {path!r} is not readable: {torch_load_error(e)}; delete it to "
                            f"resume with a fresh optimizer") from None
        if not isinstance(state, dict) or "state" not in state or "param_groups" not in state:
            raise UserError(f"{path!r} is not an optimizer state; delete it to resume with a fresh optimizer")
        if "lg_loss_scale" in state:
            self.mp_trainer.lg_loss_scale = state.pop("lg_loss_scale")
        extra_state = state.pop("extra_state", None)
        if extra_state is not None and self.extra_state is not None:
            try:
                self.extra_state.load_state_dict(extra_state)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"optimizer state {path!r} does not fit this run: {e}; delete it to resume with a "
                                f"fresh optimizer") from None
        saved_batch = state.pop("global_batch_size", None)
        batch = self.batch_size * dist_util.get_world_size()
        if saved_batch is not None and saved_batch != batch:
            # a batch size is not state: the flags win, but the step count now counts other batches
            logger.log(f"resuming with --batch_size {self.batch_size} (a global batch of {batch}): the checkpoint's "
                       f"run took global batches of {saved_batch} up to step {self.step}")
        try:
            self.opt.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"optimizer state {path!r} does not fit this model ({str(e).splitlines()[0][:120]}); "
                            f"delete it to resume with a fresh optimizer") from None
        self._apply_flags_over_saved_optimizer()

    def _apply_flags_over_saved_optimizer(self):
        """
        The optimizer state brings back the lr and weight decay it ran with; the flags given now
        win (a changed --lr is what the user asked for), and a change is logged once.
        """
        group = self.opt.param_groups[0]
        # the lr these flags give at the last step taken (annealing sets it before each step)
        expected = self.lr_at(self.step - 1)
        if not math.isclose(group["lr"], expected, rel_tol=1e-9, abs_tol=1e-15):
            logger.log(f"resuming with --lr {self.lr}" + (f" annealed over --lr_anneal_steps {self.lr_anneal_steps}"
                       if self.lr_anneal_steps else "") + f": the checkpoint's optimizer ran at lr {group['lr']:.6g} "
                       f"at step {self.step}, where these flags give {expected:.6g}")
        if group["weight_decay"] != self.weight_decay:
            logger.log(f"resuming with --weight_decay {self.weight_decay}: the checkpoint's optimizer had "
                       f"{group['weight_decay']}")
        for g in self.opt.param_groups:
            g["lr"], g["weight_decay"] = expected, self.weight_decay

    def save(self):
        """Write opt{step}.pt and the EMA files, then model{step}.pt (the model file marks a complete checkpoint)."""
        if dist_util.get_rank() == 0:
            opt_state = self.opt.state_dict()
            opt_state["lg_loss_scale"] = self.mp_trainer.lg_loss_scale
            opt_state["global_batch_size"] = self.batch_size * dist_util.get_world_size()
            if self.extra_state is not None:
                opt_state["extra_state"] = self.extra_state.state_dict()
            save_torch(opt_state, os.path.join(self.model_save_dir, f"opt{self.step:06d}.pt"))
            for rate, params in zip(self.ema_rate, self.ema_params):
                save_torch(self.mp_trainer.master_params_to_state_dict(params),
                           os.path.join(self.model_save_dir, ema_checkpoint_name(rate, self.step)))
            save_torch(self.mp_trainer.master_params_to_state_dict(),
                       os.path.join(self.model_save_dir, f"model{self.step:06d}.pt"))
            logger.log(f"saved checkpoint model{self.step:06d}.pt")
        dist_util.barrier()
        self._last_saved = self.step
        if self.on_save is not None:
            self.on_save(self.step)

    # -- the loop ---------------------------------------------------------------------------

    def _end_step(self):
        if self.lr_anneal_steps:
            return min(self.max_step, self.lr_anneal_steps)
        return self.max_step

    def _should_stop(self, start_time):
        """Why to stop now (a signal, or run_time used up), or None; all ranks agree."""
        why = stop_requested()
        if why is None and self.run_time > 0 and time.time() - start_time > self.run_time * 3600:
            why = f"--run_time {self.run_time} h used up"
        if self.use_ddp:
            flag = th.tensor(float(why is not None), device=self.device)
            dist.all_reduce(flag)
            if flag.item() > 0 and why is None:
                why = "another rank stopped"
        return why

    def run_loop(self):
        """
        Train to the end step. Stopped early by a signal or --run_time, it saves a checkpoint
        and raises Preempted (the caller's run then ends with exit status 75).
        """
        end_step = self._end_step()
        if self.step >= end_step:
            logger.log(f"nothing to do: step {self.step} >= {end_step}")
            return
        with stop_signals():
            self._run_loop(end_step)

    def _run_loop(self, end_step):
        start_time = time.time()
        self._last_saved = self.step
        stopped = None
        bar = None
        if self.progress and dist_util.get_rank() == 0:
            bar = logger.progress_bar(total=end_step if end_step < 100000000 else None, initial=self.step,
                                      desc="train", mininterval=1.0)
        self.model.train()
        try:
            while self.step < end_step:
                try:
                    self.run_step(next(self.data))
                except NonFiniteLoss as e:
                    if self._last_saved != self.step:
                        self.save()
                    raise UserError(f"the training loss is {e.args[0]} at step {self.step + 1}; the weights of the "
                                    f"last finite step are saved as model{self.step:06d}.pt in {self.model_save_dir} "
                                    f"(lower --lr, or check the data and the checkpoint it started from)") from None
                self.step += 1
                if bar is not None:
                    bar.update(1)
                if self.step % self.log_interval == 0:
                    self._log(bar)
                if self.step % self.save_interval == 0:
                    self.save()
                    self.model.train()
                stopped = self._should_stop(start_time)
                if stopped and self.step < end_step:
                    logger.log(f"stopping at step {self.step}: {stopped}")
                    break
            if self._last_saved != self.step:
                self.save()
        finally:
            if bar is not None:
                bar.close()
        if stopped and self.step < end_step:
            raise Preempted(f"{stopped} at step {self.step} of {end_step}; checkpoint model{self.step:06d}.pt saved "
                            f"in {self.model_save_dir}; the same command with --resume_checkpoint latest continues")

    def _log(self, bar):
        if self._loss_count:
            loss = (self._loss_sum / self._loss_count).item()
            logger.logkv("loss", loss)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self._loss_sum, self._loss_count = None, 0
        if self.log_fn is not None:
            self.log_fn()
        logger.logkv("lr", self.opt.param_groups[0]["lr"])
        logger.logkv("samples", self.step * self.batch_size * dist_util.get_world_size())
        if self.debug_mode:
            logger.logkv("grad_norm", self.mp_trainer.grad_norm())
            if self.device.type == "cuda":
                logger.logkv("max_memory_gib", th.cuda.max_memory_allocated(self.device) / 2**30)
        logger.dumpkvs(self.step)

    def run_step(self, batch):
        self._set_lr()
        loss = self.forward_backward(batch)
        # Checked before the update (one sync per step), so the weights stay those of the last finite step.
        if not self._all_finite(loss):
            value = loss.item()
            raise NonFiniteLoss(value if not math.isfinite(value) else "not finite on another rank")
        if self.mp_trainer.optimize(self.opt):
            self._update_ema()

    def _update_ema(self):
        """ema = rate * ema + (1 - rate) * weights, on the fp32 masters (guided-diffusion's update_ema)."""
        with th.no_grad():
            for rate, params in zip(self.ema_rate, self.ema_params):
                th._foreach_mul_(params, rate)
                th._foreach_add_(params, self.mp_trainer.master_params, alpha=1 - rate)

    def _all_finite(self, loss):
        finite = th.isfinite(loss).float()
        if self.use_ddp:  # every rank stops together (one rank's NaN would reach all in the gradient)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def forward_backward(self, batch):
        self.mp_trainer.zero_grad()
        batch = [b.to(self.device, non_blocking=True) for b in batch]
        n = batch[0].shape[0]
        step_loss = 0.0
        for i in range(0, n, self.microbatch):
            micro = [b[i:i + self.microbatch] for b in batch]
            share = micro[0].shape[0] / n
            last = i + self.microbatch >= n
            # DDP averages gradients only once, on the last microbatch.
            sync = self.ddp_model.no_sync() if self.use_ddp and not last else contextlib.nullcontext()
            with sync:
                loss, output = self.loss_fn(self.ddp_model, *micro)
                # Weight each microbatch by its share: the gradient is the whole batch's mean.
                self.mp_trainer.backward(loss * share)
            detached = loss.detach() * share
            step_loss = step_loss + detached
            self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
            if last:
                self._loss_count += 1
            if i == 0 and self.image_fn is not None and self.image_interval > 0 \
                    and (self.step + 1) % self.image_interval == 0 and dist_util.get_rank() == 0:
                with th.no_grad():
                    self.image_fn(self.step + 1, micro, output.detach())
        return step_loss

    def lr_at(self, step):
        """
        The lr of step `step` (0-based): the warm-up's linear ramp (step + 1) / warmup_steps, times
        the decay over lr_anneal_steps, linear 1 - step / T (guided-diffusion's) or cosine
        (1 + cos(pi step / T)) / 2.
        """
        scale = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.lr_anneal_steps:
            frac = step / self.lr_anneal_steps
            scale = scale * ((1 - frac) if self.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac)))
        return self.lr * scale

    def _set_lr(self):
        if self.lr_anneal_steps or self.warmup_steps:
            for param_group in self.opt.param_groups:
                param_group["lr"] = self.lr_at(self.step)
