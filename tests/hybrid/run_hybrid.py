"""One rank of the hybrid tests (tests/test_hybrid.py starts it under ``mpiexec -n K``).

``train OUT STEPS``: the hybrid AlexNet (float64, cpu, the settings of SETTINGS) runs
STEPS SGD steps on its share of seeded batches; then, as a resume would, a second model
built from another seed takes the gathered one-column weights and velocities and both
run one more step (dropout reseeded alike). Rank 0 writes OUT (npz): the losses, the
gathered weights and velocities after STEPS steps, the eval-mode logits, the extra
step's losses of both models and the gathered weights of both after it, how far apart
the ranks' conv weights are (0: the same bits) and the bytes of the last step's
collectives (the transfer log's and the gradient buckets').

``refuse``: the inputs that must be refused, each rank's error printed by rank 0 as
``rank R: <case>: <error>``.
"""
from __future__ import annotations

import sys

import numpy as np

from convnet import optim
from convnet.distributed import MPICommunicator
from convnet.models.hybrid import batch_slice, hybrid_alexnet, hybrid_step
from convnet import nn
from convnet.app.evaluate import evaluate_batches
from convnet.data.loader import Batch

WIDTHS = (4, 8, 8, 8, 8, 10, 14)   # fc6 10, fc7 14 units: uneven slices over 3 ranks
SETTINGS = dict(num_classes=5, input_size=67, widths=WIDTHS, weight_std=0.1, seed=11,
                dtype=np.float64)
SGD = dict(lr=0.05, momentum=0.9, weight_decay=0.0005)
BATCH = 7   # shares of 4 + 3 and 3 + 2 + 2 images


def batch(step: int):
    """The global batch of ``step``: the same on every rank and in the reference."""
    rng = np.random.default_rng(1000 + step)
    images = rng.standard_normal((BATCH, 3, SETTINGS["input_size"], SETTINGS["input_size"]))
    return images, rng.integers(0, SETTINGS["num_classes"], BATCH)


def shares(rank: int, size: int):
    """Rank ``rank``'s shares of two evaluation batches (0 and 1), as a sharded
    ``Loader`` yields them; with size 1 the whole batches."""
    for number in (0, 1):
        images, labels = batch(number)
        mine = batch_slice(BATCH, rank, size)
        indices = np.arange(BATCH, dtype=np.int64)[mine] + BATCH * number
        yield Batch(images=images[mine], labels=labels[mine], indices=indices, epoch=0,
                    number=number, total=BATCH)


def reseed(model, epoch: int) -> None:
    """Each dropout layer's stream from (seed, epoch, its index in named_modules), as the
    training driver does."""
    for i, (_, module) in enumerate(model.named_modules()):
        if isinstance(module, nn.Dropout):
            module.reseed([5, epoch, i])


def train(comm, out: str, steps: int) -> None:
    model = hybrid_alexnet(comm, **SETTINGS)
    opt = optim.SGD(model, **SGD)
    mine = batch_slice(BATCH, comm.rank, comm.size)
    losses = []
    for step in range(steps):
        images, labels = batch(step)
        result = hybrid_step(model, opt, images[mine], labels[mine])
        losses.append(result.loss)
    # the last step's collectives: the activations' from the transfer log, the conv
    # gradients' from the buckets
    moved = {name.removeprefix("hybrid "): entry["bytes"]
             for (_, _, _, name), entry in result.transfers.summary().items()}
    moved["conv allreduce"] = sum(b.flat.nbytes for b in model.buckets.buckets)
    # the conv weights: the same bits on every rank (each all-reduce gives all the same sum)
    apart = max(float(np.abs(comm.allgather(p.numpy()) - p.numpy()).max())
                for n, p in model.named_parameters() if n.startswith("conv"))
    weights = model.gather_state_dict()
    velocity = model.gather_state_dict(opt.state_dict()["velocity"])
    model.eval()
    logits = model(batch(0)[0][mine]).numpy()
    model.train()
    evaluation = evaluate_batches(model, model.global_batches(shares(comm.rank, comm.size)))
    model.train()
    # a resume: another model takes the one-column state (the weights read by every rank,
    # the velocities by rank 0 only and scattered), then both run one more step
    resumed = hybrid_alexnet(comm, **dict(SETTINGS, seed=SETTINGS["seed"] + 1))
    resumed.load_one_column(weights)
    opt2 = optim.SGD(resumed, **SGD)
    state = opt.state_dict()
    state["velocity"] = resumed.scatter_state_dict(velocity if comm.rank == 0 else None)
    opt2.load_state_dict(state)
    extra = []
    for m, o in ((model, opt), (resumed, opt2)):
        reseed(m, 1)
        images, labels = batch(steps)
        extra.append(hybrid_step(m, o, images[mine], labels[mine]).loss)
    after = [m.gather_state_dict() for m in (model, resumed)]
    if comm.rank == 0:
        arrays = {f"w.{k}": v for k, v in weights.items()}
        arrays.update({f"v.{k}": v for k, v in velocity.items()})
        arrays.update({f"a0.{k}": v for k, v in after[0].items()})
        arrays.update({f"a1.{k}": v for k, v in after[1].items()})
        np.savez(out, losses=np.array(losses), logits=logits, extra=np.array(extra),
                 evaluation=np.array([evaluation.loss, evaluation.top1_error,
                                      evaluation.top5_error, evaluation.images]),
                 apart=apart, moved_names=np.array(list(moved)),
                 moved_bytes=np.array(list(moved.values())), **arrays)


def refuse(comm) -> None:
    said = []

    def case(name, run):
        try:
            run()
        except Exception as exc:  # noqa: BLE001 (printed for the test to check)
            said.append(f"rank {comm.rank}: {name}: {type(exc).__name__}: {exc}")
        else:
            said.append(f"rank {comm.rank}: {name}: accepted")

    case("classes", lambda: hybrid_alexnet(comm, **dict(SETTINGS, num_classes=comm.size - 1)))
    case("settings", lambda: hybrid_alexnet(comm, **dict(SETTINGS, seed=comm.rank)))
    model = hybrid_alexnet(comm, **SETTINGS)
    opt = optim.SGD(model, **SGD)
    images, labels = batch(0)
    short = batch_slice(comm.size - 1, comm.rank, comm.size)  # the last rank gets none
    case("batch", lambda: hybrid_step(model, opt, images[short], labels[short]))
    case("images", lambda: model(images[:0]))
    mine = batch_slice(BATCH, comm.rank, comm.size)
    case("labels", lambda: hybrid_step(model, opt, images[mine], labels[mine][:1]))
    bad = {"conv1.weight": np.zeros(3)} if comm.rank == 0 else None
    case("scatter", lambda: model.scatter_state_dict(bad))
    everyone = comm.allgather_object(said)  # printed by rank 0: lines never interleave
    if comm.rank == 0:
        print("\n".join(line for lines in everyone for line in lines), flush=True)

if __name__ == "__main__":
    world = MPICommunicator(timeout=60)
    if sys.argv[1] == "train":
        train(world, sys.argv[2], int(sys.argv[3]))
    else:
        refuse(world)
    world.barrier()
