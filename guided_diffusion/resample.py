"""
Timestep samplers for diffusion training, with upstream's names: `uniform`, and
`loss-second-moment` (improved DDPM's importance sampling: p(t) proportional to the root mean
square of the last 10 losses at t, mixed with 0.1% uniform, once every t has 10 losses; the
loss is weighted by 1 / (T p(t)) so that its expectation is unchanged).

What differs from upstream, on purpose:
- `sample(..., rng=...)` draws from a given numpy Generator (the training stage seeds one per
  step, so that a resumed run draws what the uninterrupted one drew); upstream draws from
  numpy's global stream.
- The loss history is a ring buffer per timestep, updated without a Python loop over the
  batch; it holds the same last 10 losses as upstream's shifted rows (their order within a
  row, which the weights do not depend on, differs). A non-finite loss is not recorded (the
  run stops on it anyway).
- `state_dict()` / `load_state_dict()`: the history travels with the optimizer state, so a
  resumed run keeps its weights instead of warming up again.
"""

import numpy as np
import torch as th
import torch.distributed as dist

from . import logger

SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment")


def create_named_schedule_sampler(name, diffusion):
    """A ScheduleSampler by name: "uniform" or "loss-second-moment"."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise NotImplementedError(f"unknown schedule sampler: {name}")


class ScheduleSampler:
    """
    A distribution over the diffusion's timesteps, with importance weights that keep the
    objective's expectation: E[w(t) L(t)] under p equals the mean of L over t.
    """

    name = ""

    def weights(self):
        """Positive (not necessarily normalised) weights, one per timestep, as a numpy array."""
        raise NotImplementedError

    def sample(self, batch_size, device, rng=None):
        """(timesteps [batch_size] long, loss weights [batch_size] float32), both on `device`."""
        w = self.weights()
        p = w / np.sum(w)
        indices_np = (rng if rng is not None else np.random).choice(len(p), size=(batch_size,), p=p)
        indices = th.from_numpy(indices_np).long().to(device)
        weights = th.from_numpy(1 / (len(p) * p[indices_np])).float().to(device)
        return indices, weights

    def state_dict(self):
        return {"name": self.name}

    def load_state_dict(self, state):
        """Take a saved state; returns False (and logs it) for the state of another sampler."""
        if state.get("name") != self.name:
            logger.log(f"timesteps are sampled {self.name}; the checkpoint's run sampled them "
                       f"{state.get('name') or 'otherwise'}")
            return False
        return True


class UniformSampler(ScheduleSampler):
    name = "uniform"

    def __init__(self, diffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self):
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler whose weights follow the losses seen; every rank keeps the same state."""

    def update_with_local_losses(self, local_ts, local_losses):
        """
        Record this rank's timesteps and losses (1-D tensors). Under torch.distributed every
        rank must call it together: the losses of all ranks are gathered, in rank order, and
        every rank records the same ones.
        """
        ts, losses = local_ts.detach(), local_losses.detach()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            sizes = [th.zeros(1, dtype=th.int64, device=ts.device) for _ in range(world)]
            dist.all_gather(sizes, th.tensor([len(ts)], dtype=th.int64, device=ts.device))
            sizes = [int(s.item()) for s in sizes]
            width = max(sizes)

            def gather(x):
                padded = th.zeros(width, dtype=x.dtype, device=x.device)
                padded[:len(x)] = x
                parts = [th.zeros_like(padded) for _ in range(world)]
                dist.all_gather(parts, padded)
                return th.cat([part[:n] for part, n in zip(parts, sizes)])

            ts, losses = gather(ts.long()), gather(losses.float())
        self.update_with_all_losses(ts.cpu().numpy(), losses.double().cpu().numpy())

    def update_with_all_losses(self, ts, losses):
        """Record the losses of all ranks (the same arrays on every rank)."""
        raise NotImplementedError


class LossSecondMomentResampler(LossAwareSampler):
    name = "loss-second-moment"

    def __init__(self, diffusion, history_per_term=10, uniform_prob=0.001):
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        num_timesteps = diffusion.num_timesteps
        self._loss_history = np.zeros([num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([num_timesteps], dtype=np.int64)
        self._next_slot = np.zeros([num_timesteps], dtype=np.int64)  # the oldest loss, once a row is full

    def weights(self):
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history ** 2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update_with_all_losses(self, ts, losses):
        ts = np.asarray(ts, dtype=np.int64)
        losses = np.asarray(losses, dtype=np.float64)
        finite = np.isfinite(losses)
        ts, losses = ts[finite], losses[finite]
        if not len(ts):
            return
        # Group by timestep, keeping the order of arrival within each group.
        order = np.argsort(ts, kind="stable")
        ts, losses = ts[order], losses[order]
        steps, first, count = np.unique(ts, return_index=True, return_counts=True)
        arrival = np.arange(len(ts)) - np.repeat(first, count)  # 0, 1, ... within each timestep
        history = self.history_per_term
        kept = arrival >= np.repeat(count, count) - history  # only the newest `history` of a batch can stay
        slots = (self._next_slot[ts] + arrival) % history
        self._loss_history[ts[kept], slots[kept]] = losses[kept]
        self._next_slot[steps] = (self._next_slot[steps] + count) % history
        self._loss_counts[steps] = np.minimum(self._loss_counts[steps] + count, history)

    def _warmed_up(self):
        return bool((self._loss_counts == self.history_per_term).all())

    def state_dict(self):
        return {"name": self.name, "loss_history": th.from_numpy(self._loss_history.copy()),
                "loss_counts": th.from_numpy(self._loss_counts.copy()),
                "next_slot": th.from_numpy(self._next_slot.copy())}

    def load_state_dict(self, state):
        """Take a saved history; one of another sampler is left out (logged), one of another shape is a ValueError."""
        if not super().load_state_dict(state):
            logger.log(f"the loss history starts empty: uniform until every timestep has {self.history_per_term} "
                       f"losses")
            return False
        history = np.asarray(state["loss_history"].numpy(), dtype=np.float64)
        counts = np.asarray(state["loss_counts"].numpy(), dtype=np.int64)
        slots = np.asarray(state["next_slot"].numpy(), dtype=np.int64)
        if history.shape != self._loss_history.shape or counts.shape != self._loss_counts.shape \
                or slots.shape != self._next_slot.shape:
            raise ValueError(f"its timestep-sampler history is {list(history.shape)} (timesteps x losses), this "
                             f"diffusion's {list(self._loss_history.shape)}")
        self._loss_history, self._loss_counts, self._next_slot = history.copy(), counts.copy(), slots.copy()
        return True
