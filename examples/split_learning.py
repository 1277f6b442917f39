"""Vertical federated learning (split learning): two parties, one tumour classifier.

Both parties know the same patients (rows) of scikit-learn's breast cancer data
set, but each one holds different measurements (columns):

* alice holds the first 15 feature columns;
* bob holds the other 15 columns and the labels (malignant / benign).

The network is split along those lines. Each party has a *bottom model* (a linear
layer + ReLU) that turns its own columns into an 8-number embedding; bob also holds
the *top model* (logistic regression on both embeddings) and the labels. One
training step:

    alice: emb_alice = bottom_alice(x_alice)    --emb_alice-->  bob
    bob:   emb_bob = bottom_bob(x_bob)
    bob:   loss, grads = top(emb_alice, emb_bob, labels); update top
    bob:   update bottom_bob with grad_bob
    alice: update bottom_alice with grad_alice  <--grad_alice-- bob

Only embeddings and their gradients cross the party boundary: alice never sees
labels or bob's columns, bob never sees alice's columns.

Run both parties on this machine with

    fed run examples/split_learning.py --parties alice,bob
    fed run examples/split_learning.py --parties alice,bob -- --epochs 10

Both parties print the loss per epoch, then the test accuracy next to a
centralized model (same architecture, same initial weights and batches, trained
in one process on all columns). Split learning computes exactly the same
gradients as centralized training, so the two agree up to float rounding:

    split learning accuracy 0.947 | centralized 0.947
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_breast_cancer

import fed

SEED = 0  # fixes the data split, the initial weights and the batch order
TEST_FRACTION = 0.2
HIDDEN = 8  # embedding size of each bottom model
DEFAULT_EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 0.1


# --------------------------------------------------------------------------- data

def split_rows(n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the train and test splits (both parties compute the same ones).

    In a real deployment the parties would first align their rows on a shared
    record id (private set intersection); here both load the same data set.
    """
    order = np.random.default_rng(SEED).permutation(n_rows)
    n_test = round(TEST_FRACTION * n_rows)
    return order[n_test:], order[:n_test]


def column_range(party: str, n_columns: int) -> slice:
    """The feature columns a party holds: alice the first half, bob the rest."""
    half = n_columns // 2
    return slice(0, half) if party == "alice" else slice(half, n_columns)


def load_columns(party: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) features of the columns `party` holds, standardized.

    Each party standardizes its own columns with its own training rows'
    statistics, so no statistics cross the boundary.
    """
    x, y = load_breast_cancer(return_X_y=True)
    train_rows, test_rows = split_rows(len(y))
    x = x[:, column_range(party, x.shape[1])]
    mean, std = x[train_rows].mean(axis=0), x[train_rows].std(axis=0)
    x = (x - mean) / std
    return x[train_rows], x[test_rows]


def load_labels() -> tuple[np.ndarray, np.ndarray]:
    """(train, test) labels; only bob calls this."""
    _, y = load_breast_cancer(return_X_y=True)
    train_rows, test_rows = split_rows(len(y))
    return y[train_rows].astype(float), y[test_rows].astype(float)


def batches(epoch: int, n_train: int) -> list[np.ndarray]:
    """This epoch's mini-batches (positions in the train split).

    Derived from the shared seed, so both parties pick the same rows for batch k
    without talking to each other.
    """
    order = np.random.default_rng([SEED, epoch]).permutation(n_train)
    n_batches = -(-n_train // BATCH_SIZE)  # ceil: batches of at most BATCH_SIZE rows
    return np.array_split(order, n_batches)  # near-equal sizes: no tiny, noisy last batch


# --------------------------------------------------------------------------- models

class BottomModel:
    """Linear layer + ReLU: a party's columns -> an embedding of HIDDEN numbers."""

    def __init__(self, n_inputs: int, rng: np.random.Generator) -> None:
        self.w = rng.normal(0.0, np.sqrt(2.0 / n_inputs), (n_inputs, HIDDEN))  # He init
        self.b = np.zeros(HIDDEN)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        pre = x @ self.w + self.b
        if train:
            self._cache = (x, pre)  # kept for backward()
        return np.maximum(pre, 0.0)

    def backward(self, grad_embedding: np.ndarray) -> None:
        """SGD step from d(loss)/d(embedding) of the last training forward()."""
        assert self._cache is not None, "backward() without a training forward()"
        x, pre = self._cache
        grad_pre = grad_embedding * (pre > 0)  # ReLU derivative
        self.w -= LEARNING_RATE * (x.T @ grad_pre)
        self.b -= LEARNING_RATE * grad_pre.sum(axis=0)
        self._cache = None


class TopModel:
    """Logistic regression on the concatenated embeddings [alice's, bob's]."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.v = rng.normal(0.0, np.sqrt(1.0 / (2 * HIDDEN)), 2 * HIDDEN)
        self.c = 0.0

    def logits(self, emb_alice: np.ndarray, emb_bob: np.ndarray) -> np.ndarray:
        return np.concatenate([emb_alice, emb_bob], axis=1) @ self.v + self.c

    def step(self, emb_alice: np.ndarray, emb_bob: np.ndarray,
             y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """One SGD step on the mean log-loss.

        Returns the gradients w.r.t. both embeddings (computed with the weights
        *before* the update, as backpropagation requires) and the batch loss.
        """
        h = np.concatenate([emb_alice, emb_bob], axis=1)
        z = h @ self.v + self.c
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))  # stable log-loss
        grad_z = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
        grad_h = np.outer(grad_z, self.v)
        self.v -= LEARNING_RATE * (h.T @ grad_z)
        self.c -= LEARNING_RATE * float(grad_z.sum())
        return grad_h[:, :HIDDEN], grad_h[:, HIDDEN:], loss

    def accuracy(self, emb_alice: np.ndarray, emb_bob: np.ndarray, y: np.ndarray) -> float:
        return float(((self.logits(emb_alice, emb_bob) > 0) == (y == 1)).mean())


def init_models(n_alice: int, n_bob: int) -> tuple[BottomModel, BottomModel, TopModel]:
    """Initial models; the same seed gives the split and the centralized run equal weights.

    In a real deployment each party would draw its own initial weights; a shared
    seed only makes the comparison with centralized training exact.
    """
    return (BottomModel(n_alice, np.random.default_rng([SEED, 1])),
            BottomModel(n_bob, np.random.default_rng([SEED, 2])),
            TopModel(np.random.default_rng([SEED, 3])))


def model_index(party: str) -> int:
    return 0 if party == "alice" else 1


# --------------------------------------------------------------------------- fed parts

@fed.remote
class BottomParty:
    """A party's columns and bottom model; its rows never leave this actor."""

    def __init__(self, party: str, n_alice: int, n_bob: int) -> None:
        self.x_train, self.x_test = load_columns(party)
        self.model = init_models(n_alice, n_bob)[model_index(party)]

    def forward(self, epoch: int, batch: int) -> np.ndarray:
        rows = batches(epoch, len(self.x_train))[batch]
        return self.model.forward(self.x_train[rows])

    def backward(self, grad_embedding: np.ndarray) -> None:
        self.model.backward(grad_embedding)

    def embed_test(self) -> np.ndarray:
        return self.model.forward(self.x_test, train=False)


@fed.remote
class TopParty:
    """bob's top model and the labels."""

    def __init__(self, n_alice: int, n_bob: int) -> None:
        self.y_train, self.y_test = load_labels()
        self.model = init_models(n_alice, n_bob)[2]

    def step(self, epoch: int, batch: int, emb_alice: np.ndarray,
             emb_bob: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        rows = batches(epoch, len(self.y_train))[batch]
        return self.model.step(emb_alice, emb_bob, self.y_train[rows])

    def test_accuracy(self, emb_alice: np.ndarray, emb_bob: np.ndarray) -> float:
        return self.model.accuracy(emb_alice, emb_bob, self.y_test)


# --------------------------------------------------------------------------- driver

def centralized_accuracy(epochs: int) -> float:
    """Baseline: the same network trained in one process with every column.

    This pools both parties' data, which a real federation cannot do: it exists
    only to show that split learning loses nothing.
    """
    (xa_train, xa_test), (xb_train, xb_test) = load_columns("alice"), load_columns("bob")
    y_train, y_test = load_labels()
    bottom_a, bottom_b, top = init_models(xa_train.shape[1], xb_train.shape[1])
    for epoch in range(epochs):
        for rows in batches(epoch, len(y_train)):
            grad_a, grad_b, _ = top.step(bottom_a.forward(xa_train[rows]),
                                         bottom_b.forward(xb_train[rows]), y_train[rows])
            bottom_a.backward(grad_a)
            bottom_b.backward(grad_b)
    return top.accuracy(bottom_a.forward(xa_test, train=False),
                        bottom_b.forward(xb_test, train=False), y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("party", choices=("alice", "bob"), help="the party this process runs")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs (default {DEFAULT_EPOCHS})")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")

    # `fed run` passes the parties' addresses in the environment (RAYFED_ADDRESSES).
    fed.init(address="local", party=args.party)
    started = time.monotonic()

    # Public facts both parties agree on: how many columns each holds, how many rows.
    x, y = load_breast_cancer(return_X_y=True)
    n_alice = column_range("alice", x.shape[1]).stop
    n_bob = x.shape[1] - n_alice
    n_train = len(split_rows(len(y))[0])

    alice_bottom = BottomParty.party("alice").remote("alice", n_alice, n_bob)
    bob_bottom = BottomParty.party("bob").remote("bob", n_alice, n_bob)
    bob_top = TopParty.party("bob").remote(n_alice, n_bob)

    for epoch in range(args.epochs):
        losses = []
        for batch in range(len(batches(epoch, n_train))):
            emb_alice = alice_bottom.forward.remote(epoch, batch)  # pushed to bob
            emb_bob = bob_bottom.forward.remote(epoch, batch)
            grad_alice, grad_bob, loss = bob_top.step.options(num_returns=3).remote(
                epoch, batch, emb_alice, emb_bob)
            alice_bottom.backward.remote(grad_alice)  # grad_alice is pushed to alice
            bob_bottom.backward.remote(grad_bob)
            losses.append(loss)
        # Actor calls run in submission order, so the next epoch's forward() calls
        # see the updated weights; fetching the losses only paces the output.
        print(f"epoch {epoch + 1:2d}/{args.epochs}: loss {np.mean(fed.get(losses)):.4f}")

    split_acc = fed.get(bob_top.test_accuracy.remote(alice_bottom.embed_test.remote(),
                                                     bob_bottom.embed_test.remote()))
    elapsed = time.monotonic() - started

    central_acc = centralized_accuracy(args.epochs)
    print(f"{args.epochs} epochs of {len(batches(0, n_train))} batches in {elapsed:.1f} s")
    print(f"split learning accuracy {split_acc:.3f} | centralized {central_acc:.3f}")

    fed.shutdown()


if __name__ == "__main__":
    main()
