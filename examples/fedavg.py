"""Horizontal federated learning with FedAvg: three parties, one digit classifier.

alice, bob and carol each hold a disjoint shard of the training rows of
scikit-learn's handwritten digits (same 64 pixel features in every party). Each
party trains a softmax (multinomial logistic) regression on its own shard; once per
round the three models are averaged in alice, weighted by shard size, and the
average goes back to every party as the starting point of the next round.

Only model weights cross party boundaries: each party's ``Trainer`` actor loads its
own shard inside the actor, so the training rows never leave the party.

Run all three parties on this machine with

    fed run examples/fedavg.py --parties alice,bob,carol
    fed run examples/fedavg.py --parties alice,bob,carol -- --rounds 10

(each party runs ``python examples/fedavg.py <party> [--rounds N]``). Every party
prints the same per-round test accuracy, then a comparison with centralized
training (same model, same number of epochs, all training rows in one place):

    federated accuracy 0.967 | centralized 0.967 | gap 0.0 points

where gap = centralized - federated, in percentage points.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import fed

PARTIES = ("alice", "bob", "carol")
AGGREGATOR = "alice"

SEED = 0  # fixes the data split and the SGD shuffling: runs are reproducible
TEST_FRACTION = 0.2
N_FEATURES = 64  # 8x8 pixels
N_CLASSES = 10

DEFAULT_ROUNDS = 15
LOCAL_EPOCHS = 5  # epochs over its own shard each party runs per round
LEARNING_RATE = 0.5
BATCH_SIZE = 32

# The model: {"W": (N_FEATURES, N_CLASSES) array, "b": (N_CLASSES,) array}. A dict
# of plain numpy arrays crosses party boundaries without any serialization setup.
Weights = dict[str, np.ndarray]


# --------------------------------------------------------------------------- data

def split_rows(n_rows: int, n_parties: int = len(PARTIES)) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row indices of the shared test split and of one disjoint training shard per party.

    Every party computes the same split from the same seed; the indices say which
    rows a party *would* own, the rows themselves are loaded only by their owner.
    """
    order = np.random.default_rng(SEED).permutation(n_rows)
    n_test = round(TEST_FRACTION * n_rows)
    return order[:n_test], np.array_split(order[n_test:], n_parties)


def load_all() -> tuple[np.ndarray, np.ndarray]:
    """All digits rows: features scaled to [0, 1], and labels.

    Pixels range over 0..16, a fixed scale known to everyone: no statistics of the
    data are needed, so no party has to share any.
    """
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


def load_test_split() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_all()
    test_rows, _ = split_rows(len(y))
    return x[test_rows], y[test_rows]


def load_shard(party_index: int) -> tuple[np.ndarray, np.ndarray]:
    """The training rows of one party (only ever called inside that party)."""
    x, y = load_all()
    _, shards = split_rows(len(y))
    return x[shards[party_index]], y[shards[party_index]]


# --------------------------------------------------------------------------- model

def init_weights() -> Weights:
    # The loss is convex, so starting from zeros is fine (and identical everywhere).
    return {"W": np.zeros((N_FEATURES, N_CLASSES)), "b": np.zeros(N_CLASSES)}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)  # avoids overflow in exp
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def sgd(weights: Weights, x: np.ndarray, y: np.ndarray, epochs: int,
        rng: np.random.Generator) -> Weights:
    """Mini-batch SGD on the cross-entropy loss; returns new weights."""
    w, b = weights["W"].copy(), weights["b"].copy()
    one_hot = np.eye(N_CLASSES)[y]
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            # Gradient of the mean cross-entropy w.r.t. the logits.
            grad = (softmax(x[batch] @ w + b) - one_hot[batch]) / len(batch)
            w -= LEARNING_RATE * (x[batch].T @ grad)
            b -= LEARNING_RATE * grad.sum(axis=0)
    return {"W": w, "b": b}


def accuracy(weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
    predictions = (x @ weights["W"] + weights["b"]).argmax(axis=1)
    return float((predictions == y).mean())


# --------------------------------------------------------------------------- fed parts

@fed.remote
class Trainer:
    """One party's local trainer; it is the only place where the party's rows live."""

    def __init__(self, party_index: int) -> None:
        self.x, self.y = load_shard(party_index)
        self.weights = init_weights()
        self.rng = np.random.default_rng([SEED, party_index])

    def num_samples(self) -> int:
        return len(self.y)

    def set_weights(self, weights: Weights) -> None:
        self.weights = weights

    def train(self) -> Weights:
        """A few local epochs from the current (global) weights."""
        self.weights = sgd(self.weights, self.x, self.y, LOCAL_EPOCHS, self.rng)
        return self.weights


@fed.remote
def fedavg(shard_sizes: list[int], *updates: Weights) -> Weights:
    """The FedAvg step: average of the parties' weights, weighted by shard size."""
    total = sum(shard_sizes)
    return {
        name: sum(n * update[name] for n, update in zip(shard_sizes, updates)) / total
        for name in updates[0]
    }


# --------------------------------------------------------------------------- driver

def centralized_accuracy(epochs: int) -> float:
    """Baseline: the same model and epoch budget, with all training rows in one place.

    This pools every party's rows, which a real federation cannot do: it exists
    only to show what federated training gives up (here: almost nothing).
    """
    x, y = load_all()
    test_rows, shards = split_rows(len(y))
    train_rows = np.concatenate(shards)
    weights = sgd(init_weights(), x[train_rows], y[train_rows], epochs,
                  np.random.default_rng(SEED))
    return accuracy(weights, x[test_rows], y[test_rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("party", choices=PARTIES, help="the party this process runs")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"federated rounds (default {DEFAULT_ROUNDS})")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    # `fed run` passes the parties' addresses in the environment (RAYFED_ADDRESSES).
    fed.init(address="local", party=args.party)
    started = time.monotonic()

    trainers = [Trainer.party(p).remote(i) for i, p in enumerate(PARTIES)]
    # Besides its model updates, a party discloses only its shard size (for the weighting).
    shard_sizes = fed.get([t.num_samples.remote() for t in trainers])
    # The test split is the same in every party, so each party evaluates the global
    # model itself and all of them print the same numbers.
    x_test, y_test = load_test_split()

    test_acc = 0.0
    for rnd in range(1, args.rounds + 1):
        updates = [t.train.remote() for t in trainers]
        global_weights = fedavg.party(AGGREGATOR).remote(shard_sizes, *updates)
        for t in trainers:
            t.set_weights.remote(global_weights)
        # Every party fetches the averaged weights (alice pushes them to bob and carol).
        test_acc = accuracy(fed.get(global_weights), x_test, y_test)
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
