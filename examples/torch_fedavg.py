"""Horizontal federated learning in PyTorch: FedAvg of a small MLP over three parties.

alice, bob and carol each hold a disjoint shard of the training rows of
scikit-learn's handwritten digits (bundled with scikit-learn: nothing is
downloaded). Each party trains the same small ``torch.nn`` network (64 pixels ->
32 hidden units -> 10 classes) on its own shard; once per round every party's
``state_dict()`` crosses to alice, which averages it weighted by shard size, and
the averaged ``state_dict`` crosses back to every party as the starting point of
the next round.

Only model weights (tensors) cross party boundaries, with rayfed's default
configuration: tensors and state dicts cross as data, no serialization setup is
needed. Each party's ``Trainer`` actor loads its own shard inside the actor, so the
training rows never leave the party.

Run all three parties on this machine with

    fed run examples/torch_fedavg.py --parties alice,bob,carol
    fed run examples/torch_fedavg.py --parties alice,bob,carol -- --rounds 15
    fed run examples/torch_fedavg.py --parties alice,bob,carol --simulate

(each party runs ``python examples/torch_fedavg.py <party> [--rounds N]``). Every
party prints the same per-round test accuracy, then a comparison with centralized
training (same network, same initial weights, same number of epochs, all training
rows in one place):

    federated accuracy 0.969 | centralized 0.975 | gap 0.6 points

where gap = centralized - federated, in percentage points. Everything is seeded
and torch runs deterministically on one thread, so both modes print the same
numbers.
"""
from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import fed

PARTIES = ("alice", "bob", "carol")
AGGREGATOR = "alice"

SEED = 0  # fixes the data split, the initial weights and the batch order
TEST_FRACTION = 0.2
N_FEATURES = 64  # 8x8 pixels
HIDDEN = 32
N_CLASSES = 10

DEFAULT_ROUNDS = 10
LOCAL_EPOCHS = 5  # epochs over its own shard each party runs per round
LEARNING_RATE = 0.2
BATCH_SIZE = 32

# What crosses: a network's state_dict(), an ordered {name: tensor} mapping.
StateDict = dict[str, torch.Tensor]


def setup_torch() -> None:
    """One thread and deterministic kernels, in the driver and in every Ray worker.

    Three parties share this machine's cores, so one thread each avoids
    oversubscription, and a fixed thread count keeps every result bit-for-bit the
    same in production and in simulation.
    """
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


# --------------------------------------------------------------------------- data

def split_rows(n_rows: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row indices of the shared test split and of one disjoint training shard per party.

    Every party computes the same split from the same seed; the indices say which
    rows a party *would* own, the rows themselves are loaded only by their owner.
    """
    order = np.random.default_rng(SEED).permutation(n_rows)
    n_test = round(TEST_FRACTION * n_rows)
    return order[:n_test], np.array_split(order[n_test:], len(PARTIES))


def load_rows(which: str | int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features scaled to [0, 1] and labels of the test split ("test") or a party's shard.

    Pixels range over 0..16, a fixed scale known to everyone: no statistics of the
    data are needed, so no party has to share any.
    """
    x, y = load_digits(return_X_y=True)
    test_rows, shards = split_rows(len(y))
    rows = test_rows if which == "test" else shards[int(which)]
    return torch.tensor(x[rows] / 16.0, dtype=torch.float32), torch.tensor(y[rows])


# --------------------------------------------------------------------------- model

def make_model() -> nn.Module:
    """The network, with the same seeded initial weights in every party."""
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, N_CLASSES))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
          generator: torch.Generator) -> None:
    """Mini-batch SGD on the cross-entropy loss, in place."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


def accuracy(state: StateDict, x: torch.Tensor, y: torch.Tensor) -> float:
    model = make_model()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


# --------------------------------------------------------------------------- fed parts

@fed.remote
class Trainer:
    """One party's local trainer; it is the only place where the party's rows live."""

    def __init__(self, party_index: int) -> None:
        setup_torch()
        self.x, self.y = load_rows(party_index)
        self.model = make_model()
        self.generator = torch.Generator().manual_seed(SEED + 1 + party_index)

    def num_samples(self) -> int:
        return len(self.y)

    def set_weights(self, state: StateDict) -> None:
        self.model.load_state_dict(state)

    def train(self) -> StateDict:
        """A few local epochs from the current (global) weights; the new state_dict."""
        train(self.model, self.x, self.y, LOCAL_EPOCHS, self.generator)
        return self.model.state_dict()


@fed.remote
def fedavg(shard_sizes: list[int], *updates: StateDict) -> StateDict:
    """The FedAvg step: average of the parties' tensors, weighted by shard size."""
    setup_torch()
    total = sum(shard_sizes)
    return OrderedDict(
        (name, sum(n * update[name] for n, update in zip(shard_sizes, updates)) / total)
        for name in updates[0]
    )


# --------------------------------------------------------------------------- driver

def centralized_accuracy(epochs: int) -> float:
    """Baseline: the same network and epoch budget, with all training rows in one place.

    This pools every party's rows, which a real federation cannot do: it exists
    only to show what federated training gives up (here: almost nothing).
    """
    shards = [load_rows(i) for i in range(len(PARTIES))]
    x = torch.cat([x for x, _ in shards])
    y = torch.cat([y for _, y in shards])
    model = make_model()
    train(model, x, y, epochs, torch.Generator().manual_seed(SEED))
    return accuracy(model.state_dict(), *load_rows("test"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("party", choices=PARTIES, help="the party this process runs")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"federated rounds (default {DEFAULT_ROUNDS})")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    setup_torch()

    # `fed run` passes the parties' addresses in the environment (RAYFED_ADDRESSES).
    fed.init(address="local", party=args.party)
    started = time.monotonic()

    trainers = [Trainer.party(p).remote(i) for i, p in enumerate(PARTIES)]
    # Besides its model updates, a party discloses only its shard size (for the weighting).
    shard_sizes = fed.get([t.num_samples.remote() for t in trainers])
    # The test split is the same in every party, so each party evaluates the global
    # model itself and all of them print the same numbers.
    x_test, y_test = load_rows("test")

    test_acc = 0.0
    for rnd in range(1, args.rounds + 1):
        updates = [t.train.remote() for t in trainers]  # pushed to alice
        global_state = fedavg.party(AGGREGATOR).remote(shard_sizes, *updates)
        for t in trainers:
            t.set_weights.remote(global_state)  # alice pushes it to bob and carol
        test_acc = accuracy(fed.get(global_state), x_test, y_test)
        print(f"round {rnd:2d}/{args.rounds}: test accuracy {test_acc:.3f}")
    elapsed = time.monotonic() - started

    central_acc = centralized_accuracy(args.rounds * LOCAL_EPOCHS)
    gap = 100 * (central_acc - test_acc)
    print(f"{args.rounds} rounds x {LOCAL_EPOCHS} local epochs in {elapsed:.1f} s "
          f"(shards {shard_sizes}, test rows {len(y_test)})")
    # One machine-checkable result line; gap > 0 means centralized training did better.
    print(f"federated accuracy {test_acc:.3f} | centralized {central_acc:.3f} "
          f"| gap {gap:.1f} points")

    fed.shutdown()


if __name__ == "__main__":
    main()
