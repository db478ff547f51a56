"""Predictive coding: biograd ``predictive_coding`` beside PCX on PCX's own MNIST setting.

The setting is PCX's MLP time benchmark (Pinchetti et al. 2024, arXiv:2407.01163; the PCX
repository's ``examples/s6_computational_resources/time_benchmarking/MLP/mnist/PC_SE.yaml``
and ``PC_SE.py``): MLP 784-128-128-128-10 with GELU (JAX's default tanh approximation), one
value node per ``Linear -> GELU`` block, squared-error energy with the output clamped to the
one-hot label (beta = 1), batch 128 (last partial batch dropped), T = 5 inference steps of SGD
with lr 0.0105 and momentum 0.65 on the value nodes (optimiser state fresh every batch), then
AdamW on the weights (lr 2.97e-4, weight decay 3.55e-4, optax's warmup-cosine schedule:
10 % linear warm-up to 1.1 lr, cosine decay to 0.1 lr over the run), gradients of the summed
per-sample energy scaled by 1 / batch.

biograd runs the same algorithm: ``predictive_coding(loss="mse", T=5, gamma=0.0105, momentum=0.65,
nodes="blocks", beta=128)``, eager (row ``biograd``) and with ``compile=True`` (row
``biograd-compiled``: the whole step compiled by ``torch.compile``, as PCX's step is compiled by
XLA; the first epoch of both includes compilation). biograd's energy is ``sum_b sum_l 1/2 ||e_l||^2
+ beta * L`` with ``L`` the batch *mean* of 1/2 ||mu_out - onehot(y)||^2, so beta = batch size
gives PCX's per-sample energy (output clamped, beta = 1), and biograd's update dF/dtheta / beta is
PCX's dE/dtheta / batch. The same torch tensors from ``biograd.data.load("mnist")``, the same
shuffling and the same epochs feed both; each library runs in its own process (interleaved
repeats), pinned to 2 CPUs with 2 threads: ``torch.set_num_threads(2)`` for torch, and for XLA
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2"`` plus the
2-CPU affinity. The OpenMP wait policy is left to the caller: on a quiet machine the default
(threads spin at barriers) is about 2x faster for torch at 2 threads than
``OMP_WAIT_POLICY=PASSIVE``; on a machine shared with other jobs, spinning barriers can cost
torch 50x, so set ``OMP_WAIT_POLICY=PASSIVE`` there. biograd's weights take torch's fused
AdamW (one kernel, the same update as ``foreach``; optax's AdamW is fused by XLA).
Seconds per epoch are training wall time (evaluation excluded; PCX's first epoch includes its
JIT compilation, so epoch 2 is the steady-state comparison).

Usage (installs nothing; the PCX row appears when ``import pcx`` works in the interpreter that
runs the script)::

    python3 -m venv /work/venvs/pcx
    /work/venvs/pcx/bin/pip install pcx              # pulls jax/jaxlib (CPU), optax, equinox
    /work/venvs/pcx/bin/pip install torch==2.13.0    # as the Makefile installs it
    /work/venvs/pcx/bin/pip install -e /work/main    # biograd itself
    /work/venvs/pcx/bin/python benchmarks/pc_vs_pcx.py --epochs 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

LIBS = ("pcx", "biograd", "biograd-compiled")
THREADS = int(os.environ.get("PC_VS_PCX_THREADS", "2"))
HP = {"T": 5, "batch": 128, "x_lr": 0.010534787245955935, "x_momentum": 0.65,
      "w_lr": 0.0002968930522737348, "w_wd": 0.0003550241114984682, "hidden": 128, "layers": 4}


def _pin(threads: int) -> None:
    """``threads`` threads on as many CPUs: environment set before torch or jax is imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["XLA_FLAGS"] = (f"--xla_cpu_multi_thread_eigen=true "
                               f"intra_op_parallelism_threads={threads}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[:threads])


def lr_at(step: int, total: int) -> float:
    """optax.warmup_cosine_decay_schedule(init=lr, peak=1.1 lr, warmup=0.1 total,
    decay=total, end=0.1 lr, exponent=1) at ``step``."""
    lr, peak, end, warm = HP["w_lr"], 1.1 * HP["w_lr"], 0.1 * HP["w_lr"], 0.1 * total
    if step < warm:
        return lr + (peak - lr) * step / warm
    t = min(step - warm, total - warm) / (total - warm)
    return (peak - end) * 0.5 * (1 + math.cos(math.pi * t)) + end


def _data():
    import biograd.data as D
    xtr, ytr = D.load("mnist", "train", flatten=True).tensors
    xte, yte = D.load("mnist", "test", flatten=True).tensors
    return xtr, ytr, xte, yte


def _batches(n: int, epoch: int, seed: int):
    import torch
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    b = HP["batch"]
    return [perm[i: i + b] for i in range(0, n - b + 1, b)]


def run_biograd(epochs: int, seed: int, compiled: bool = False) -> dict:
    import torch
    from torch import nn

    import biograd
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = _data()
    model = biograd.models.mlp(784, [HP["hidden"]] * (HP["layers"] - 1), 10, activation="gelu")
    for i, m in enumerate(model):
        if isinstance(m, nn.GELU):
            model[i] = nn.GELU(approximate="tanh")  # jax.nn.gelu's default
    rule = biograd.create_rule("predictive_coding", model, loss="mse", T=HP["T"],
                               gamma=HP["x_lr"], momentum=HP["x_momentum"], nodes="blocks",
                               beta=float(HP["batch"]), compile=compiled)
    opt = torch.optim.AdamW(rule.parameters(), lr=HP["w_lr"], weight_decay=HP["w_wd"],
                            fused=True)  # torch's one-kernel AdamW (optax's is XLA-fused)
    total = (len(xtr) // HP["batch"]) * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total) / HP["w_lr"])
    secs, accs = [], []
    for ep in range(epochs):
        batches = _batches(len(xtr), ep, seed)
        t0 = time.perf_counter()
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            rule.step(xtr[idx], ytr[idx])
            opt.step()
            sched.step()
        secs.append(time.perf_counter() - t0)
        with torch.no_grad():
            accs.append(float((model(xte).argmax(1) == yte).float().mean()) * 100)
    return {"lib": "biograd-compiled" if compiled else "biograd", "secs": secs, "acc": accs}


def run_pcx(epochs: int, seed: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import pcx
    import pcx.functional as pxf
    import pcx.nn as pxnn
    import pcx.predictive_coding as pxc
    import pcx.utils as pxu
    pcx.RKG.seed(seed)
    xtr, ytr, xte, yte = _data()
    xtr_np, ytr_np, xte_np = xtr.numpy(), ytr.numpy(), xte.numpy()

    class MLP(pxc.EnergyModule):
        """PCX's MLP: vode after every GELU(Linear), squared-error output vode clamped."""

        def __init__(self) -> None:
            super().__init__()
            h, n = HP["hidden"], HP["layers"]
            sizes = [784] + [h] * (n - 1) + [10]
            self.layers = [pxnn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
            self.vodes = [pxc.Vode() for _ in range(n - 1)] + [pxc.Vode(pxc.se_energy)]
            self.vodes[-1].h.frozen = True

        def __call__(self, x, y):
            for vode, layer in zip(self.vodes[:-1], self.layers[:-1], strict=True):
                x = vode(jax.nn.gelu(layer(x)))
            self.vodes[-1](self.layers[-1](x))
            if y is not None:
                self.vodes[-1].set("h", y)
            return self.vodes[-1].get("u")

    mask = pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0))

    @pxf.vmap(mask, in_axes=(0, 0), out_axes=0, axis_name="batch")
    def forward(x, y, *, model):
        return model(x, y)

    @pxf.vmap(mask, in_axes=(0,), out_axes=0, axis_name="batch")
    def infer(x, *, model):
        return model(x, None)

    @pxf.vmap(mask, in_axes=(0,), out_axes=(None, 0), axis_name="batch")
    def energy(x, *, model):
        out = model(x, None)
        return jax.lax.psum(model.energy(), "batch"), out

    free = pxu.M_hasnot(pxc.VodeParam, frozen=True)

    @pxf.jit(static_argnums=0)
    def train_step(T, x, y, *, model, optim_w, optim_h):
        model.train()
        with pxu.step(model, (pxc.STATUS.INIT, None), clear_params=pxc.VodeParam.Cache):
            forward(x, y, model=model)
        optim_h.init(free(model))
        for _ in range(T):
            with pxu.step(model, clear_params=pxc.VodeParam.Cache):
                _, g = pxf.value_and_grad(free.to([False, True]), has_aux=True)(energy)(
                    x, model=model)
            optim_h.step(model, g["model"], True)
        optim_h.clear()
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            _, g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(
                energy)(x, model=model)
        optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])

    @pxf.jit()
    def predict(x, *, model):
        model.eval()
        with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            return infer(x, model=model).argmax(axis=-1)

    model = MLP()
    with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
        infer(jnp.zeros((HP["batch"], 784)), model=model)
    total = (len(xtr) // HP["batch"]) * epochs
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=HP["w_lr"], peak_value=1.1 * HP["w_lr"], warmup_steps=0.1 * total,
        decay_steps=total, end_value=0.1 * HP["w_lr"], exponent=1.0)
    optim_h = pxu.Optim(lambda: optax.sgd(HP["x_lr"], momentum=HP["x_momentum"]))
    optim_w = pxu.Optim(lambda: optax.adamw(schedule, weight_decay=HP["w_wd"]),
                        pxu.M(pxnn.LayerParam)(model))
    eye = np.eye(10, dtype=np.float32)
    secs, accs = [], []
    for ep in range(epochs):
        batches = [i.numpy() for i in _batches(len(xtr), ep, seed)]
        t0 = time.perf_counter()
        for idx in batches:
            train_step(HP["T"], jnp.asarray(xtr_np[idx]), jnp.asarray(eye[ytr_np[idx]]),
                       model=model, optim_w=optim_w, optim_h=optim_h)
        jax.block_until_ready(model.layers[0].nn.weight.get())
        secs.append(time.perf_counter() - t0)
        pred = []  # fixed batch shape (the value nodes are batch-sized): pad the last batch
        for i in range(0, len(xte_np), HP["batch"]):
            chunk = xte_np[i: i + HP["batch"]]
            padded = np.zeros((HP["batch"], 784), np.float32)
            padded[: len(chunk)] = chunk
            pred.append(np.asarray(predict(jnp.asarray(padded), model=model))[: len(chunk)])
        pred = np.concatenate(pred)
        accs.append(float((pred == yte.numpy()).mean()) * 100)
    return {"lib": "pcx", "secs": secs, "acc": accs}


def _child(lib: str, epochs: int, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--child", lib, "--epochs", str(epochs), "--seed", str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"lib": lib, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=LIBS)
    ap.add_argument("--threads", type=int, default=THREADS, help="threads per library (2)")
    args = ap.parse_args()
    os.environ["PC_VS_PCX_THREADS"] = str(args.threads)
    if args.child:
        _pin(args.threads)
        if args.child == "pcx":
            print(json.dumps(run_pcx(args.epochs, args.seed)))
        else:
            print(json.dumps(run_biograd(args.epochs, args.seed, args.child != "biograd")))
        return
    try:
        import pcx  # noqa: F401
        libs = list(LIBS)
    except ImportError:
        libs = LIBS[1:]
        print("PCX is not importable here: biograd row only (see the docstring to install it)")
    rows = []
    for r in range(args.repeats):
        for lib in (libs if r % 2 == 0 else libs[::-1]):  # interleaved, alternating order
            res = _child(lib, args.epochs, args.seed + r)
            res["repeat"] = r
            rows.append(res)
            print(json.dumps(res), flush=True)
    print(f"\nMNIST MLP 784-128x3-10 GELU, batch {HP['batch']}, T={HP['T']}, "
          f"{args.epochs} epochs, {args.threads} threads, {args.repeats} repeats (seeds "
          f"{args.seed}..{args.seed + args.repeats - 1})")
    print(f"{'library':16s} {'repeat':>6s} " + " ".join(
        f"{'s/ep' + str(e + 1):>8s}" for e in range(args.epochs))
        + f" {'test acc %':>10s}")
    for res in rows:
        if "error" in res:
            print(f"{res['lib']:16s} {res['repeat']:6d} failed: {res['error']}")
            continue
        print(f"{res['lib']:16s} {res['repeat']:6d} " + " ".join(f"{s:8.2f}" for s in res["secs"])
              + f" {res['acc'][-1]:10.2f}")


if __name__ == "__main__":
    main()
