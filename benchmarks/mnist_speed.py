"""
MNIST training speed, measured in one run (interleaved rounds, same data; every timing in
a fresh process, so that no pipeline inherits another's state; the speed-up is given both as
the ratio of each pipeline's best round and per round, its two timings back to back):

  per-item   a pipeline like the original's: a Dataset that returns one image (and its
             noisy label and p) at a time, DataLoader batch 128 with num_workers=1, the
             NCHW network with ReLU before max-pool, torch.optim.Adam with its defaults;
  ours       the data as float tensors on the device, a batch an index into them; the
             channels_last SimpleCNN with max-pool before ReLU; a step of the project's
             TrainLoop (fused Adam); malloc keeping freed memory (keep_freed_memory);
  ours x2    two of our trainings at once in two processes of one thread each: the time
             per step of the pair;
  stacks     as scripts/mnist_sweep.py trains (--workers 2 --stack K): two processes of one
             thread, each training a StackedCNN of K runs: the time per run-step of all.

It also times one evaluation pass (70,000 images) and extrapolates the paper's sweep:
clean + 3 noise types x 8 levels, 20,000 steps each, an evaluation every 2,000 steps.

    python benchmarks/mnist_speed.py                      # 60,000 synthetic images
    python benchmarks/mnist_speed.py --data_dir data/mnist --steps 500
    python benchmarks/mnist_speed.py --stacks 4,5,8     # stack sizes to time
"""

import argparse
import json
import multiprocessing
import os
import tempfile
import time

import numpy as np
import torch as th
import torch.nn.functional as F
from bench_util import round_ratios, seconds_per_call

from noisy_mnist.data import load_split, to_inputs, train_batches
from noisy_mnist.model import SimpleCNN, create_model, predict_logits
from noisy_mnist.noise import draw_labels, noise_distribution
from noisy_mnist.tasks import cross_entropy_loss, stacked_cross_entropy_loss
from runkit import dist_util, logger
from runkit.training import TrainLoop

SWEEP_RUNS, SWEEP_STEPS, SWEEP_EVALS = 25, 20000, 10  # one per checkpoint; the analysis reuses the last
EVAL_BATCH = 2000


class PerItemDataset(th.utils.data.Dataset):
    """Like the original's MNISTDataset: per item, image / 255 with a channel axis, labels, p."""

    def __init__(self, images, labels, noisy_labels, p):
        self.images, self.labels, self.noisy_labels, self.p = images, labels, noisy_labels, p

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index] / 255.0
        return image.unsqueeze(0), self.labels[index], th.tensor(self.noisy_labels[index]), th.tensor(self.p[index])


class OriginalOrderCNN(SimpleCNN):
    """The original's forward: ReLU, then max-pool, on NCHW tensors."""

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.view(-1, 256)))
        return self.fc3(F.relu(self.fc2(x)))


def load_data(data_dir, n):
    if data_dir:
        images, labels = load_split(data_dir, "train")
    else:
        generator = th.Generator().manual_seed(0)
        images = th.randint(0, 256, (n, 28, 28), dtype=th.uint8, generator=generator)
        labels = th.randint(0, 10, (n,), generator=generator)
    p = noise_distribution("uniform", 0.6, labels.numpy())
    noisy = draw_labels(p, np.random.default_rng(0))
    return images, labels, noisy, p


def per_item_stepper(images, labels, noisy, p):
    dataset = PerItemDataset(images, labels, noisy, p)
    loader = th.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=1, drop_last=True,
                                      pin_memory=th.cuda.is_available())
    model = OriginalOrderCNN().to(dist_util.dev())
    opt = th.optim.Adam(model.parameters(), lr=1e-4)

    def endless():
        while True:
            yield from loader

    batches = endless()

    def step():
        image, _, noisy_label, _ = next(batches)
        opt.zero_grad()
        loss = F.cross_entropy(model(image.to(dist_util.dev())), noisy_label.to(dist_util.dev()))
        loss.backward()
        opt.step()
    return step


def our_stepper(images, noisy, save_dir, num_runs=0):
    """A step of our TrainLoop: one SimpleCNN, or (num_runs >= 1) a StackedCNN of num_runs."""
    device = dist_util.dev()
    inputs = to_inputs(images, device)
    targets = th.from_numpy(noisy).to(device)
    if num_runs:  # the runs' labels differ in a sweep; here a different roll of them each
        targets = th.stack([targets.roll(i) for i in range(num_runs)], dim=1)
    loop = TrainLoop(model=create_model(256, "128,64", device, num_runs),
                     data=train_batches(inputs, targets, 128, seed=0),
                     loss_fn=stacked_cross_entropy_loss if num_runs else cross_entropy_loss, batch_size=128,
                     lr=1e-4, model_save_dir=save_dir, optimizer="adam", progress=False)
    return lambda: loop.run_step(next(loop.data)), loop.model, inputs


def eval_seconds(model, inputs):
    """One evaluation pass over 70,000 images (a checkpoint's train + test evaluation; of all runs of a stack)."""
    repeat = -(-70000 // len(inputs))
    start = time.perf_counter()
    for _ in range(repeat):
        predict_logits(model, inputs[:70000], EVAL_BATCH)
    return (time.perf_counter() - start) * 70000 / (repeat * min(len(inputs), 70000))


def _timed_worker(args, pipeline, threads, barrier, queue):
    """Time one pipeline in this (spawned) process: (seconds per step, evaluation pass seconds)."""
    if threads:
        th.set_num_threads(threads)
    images, labels, noisy, p = load_data(args["data_dir"], args["n"])
    logger.configure(tempfile.mkdtemp(), format_strs=())  # TrainLoop logs nothing here
    with tempfile.TemporaryDirectory() as tmp:
        if pipeline == "per_item":
            step, model, inputs = per_item_stepper(images, labels, noisy, p), None, None
        else:
            dist_util.keep_freed_memory()  # as our tasks set it (noisy_mnist.tasks)
            step, model, inputs = our_stepper(images, noisy, tmp, args["num_runs"])
        for _ in range(args["warmup"]):
            step()
        barrier.wait()  # concurrent trainings are timed over the same stretch
        seconds = seconds_per_call(step, args["steps"], 0, dist_util.dev())
        queue.put((seconds, eval_seconds(model, inputs) if model is not None else 0.0))


def timed_in_processes(args, pipeline, processes=1, threads=0):
    """
    Time `pipeline` ("per_item" or "ours") in fresh processes, `processes` of them at once
    (threads each; 0: torch's default), each of args["num_runs"] stacked runs (0: one
    SimpleCNN). Returns the time per run-step of all and the longest evaluation pass per run.
    A fresh process per measurement: no pipeline inherits another's allocator settings.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_timed_worker, args=(args, pipeline, threads, barrier, queue))
               for _ in range(processes)]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    runs = max(1, args["num_runs"])
    run_steps_per_second = sum(runs / s for s, _ in results)
    return 1 / run_steps_per_second, max(e for _, e in results) / runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="", help="a prepared data folder; default: synthetic images")
    parser.add_argument("--n", type=int, default=60000, help="synthetic training images")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per round and pipeline")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrent", type=int, default=1, help="1: also time two single-threaded trainings")
    parser.add_argument("--stacks", default="5", help="stack sizes to time in two processes ('': none)")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    images = load_data(args.data_dir, args.n)[0]
    single = dict(vars(args), num_runs=0)
    times, evaluation = {"per_item": [], "ours": []}, []
    for round_index in range(args.rounds):
        # alternate which goes first, so that neither is always timed in the same part of a round
        for name in (("per_item", "ours") if round_index % 2 == 0 else ("ours", "per_item")):
            seconds, eval_pass = timed_in_processes(single, name)
            times[name].append(seconds)
            if name == "ours":
                evaluation.append(eval_pass)
    evaluation = min(evaluation)
    best = {k: min(v) for k, v in times.items()}
    result = dict(threads=th.get_num_threads(), device=str(dist_util.dev()), torch=th.__version__,
                  images=len(images), steps=args.steps, rounds=args.rounds,
                  ms_per_step={k: 1000 * v for k, v in best.items()},
                  ms_per_step_rounds={k: [round(1000 * x, 2) for x in v] for k, v in times.items()},
                  speedup=best["per_item"] / best["ours"], eval_pass_s=evaluation)
    result["speedup_per_round"], result["speedup_median_of_rounds"] = round_ratios(times["per_item"], times["ours"])
    sweep_s = SWEEP_RUNS * (SWEEP_STEPS * best["ours"] + SWEEP_EVALS * evaluation)
    result["sweep_minutes"] = {"ours, one process": sweep_s / 60}
    concurrent = ([("ours x2 (pair)", 0)] if args.concurrent else []) + \
        [(f"stacks of {k} x2", k) for k in (int(x) for x in args.stacks.split(",") if x)]
    for name, num_runs in concurrent:
        # per run-step (all runs of both processes); an evaluation pass per run, both processes at once
        run_step, run_eval = timed_in_processes(dict(vars(args), num_runs=num_runs), "ours", processes=2,
                                                threads=1)
        result["ms_per_step"][name] = 1000 * run_step
        result.setdefault("eval_pass_s_per_run_one_thread", {})[name] = run_eval
        result["sweep_minutes"][name] = SWEEP_RUNS * (SWEEP_STEPS * run_step + SWEEP_EVALS * run_eval / 2) / 60
    result["load_average"] = [load_before, os.getloadavg()[0]]

    print(f"{result['images']} images, {result['threads']} threads, {result['device']}, torch {result['torch']}; "
          f"best of {args.rounds} rounds of {args.steps} steps")
    for name, ms in result["ms_per_step"].items():
        print(f"  {name:>18}: {ms:6.2f} ms per step (of one run)")
    print(f"  every round: {result['ms_per_step_rounds']}")
    print(f"  ours is {result['speedup']:.2f}x faster per step than the per-item pipeline (best round of each); "
          f"per round {', '.join(f'{r:.2f}x' for r in result['speedup_per_round'])}, "
          f"median {result['speedup_median_of_rounds']:.2f}x")
    print(f"  one evaluation pass (70,000 images): {evaluation:.2f} s")
    for name, minutes in result["sweep_minutes"].items():
        print(f"  paper's sweep ({SWEEP_RUNS} runs x {SWEEP_STEPS} steps), {name}: {minutes:.0f} min")
    print(f"  load average before / after: {load_before:.2f} / {result['load_average'][1]:.2f} "
          f"(other work on the machine slows every number)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
