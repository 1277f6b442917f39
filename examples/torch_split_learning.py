"""Vertical federated learning in PyTorch (split learning): three parties, one classifier.

All parties know the same patients (rows) of scikit-learn's breast cancer data
set (bundled with scikit-learn: nothing is downloaded), but each one holds
different things about them:

* alice holds the first 15 feature columns;
* bob holds the other 15 columns;
* carol, the label party, holds the labels (malignant / benign).

The network is split along those lines. alice and bob each hold a *bottom model*
(``torch.nn.Linear`` + ReLU) that turns their own columns into an 8-number
embedding; carol holds the *top model* (a small MLP on both embeddings) and the
labels. One training step, every mini-batch:

    alice: emb_alice = bottom_alice(x_alice)  (graph kept)  --emb_alice-->  carol
    bob:   emb_bob = bottom_bob(x_bob)        (graph kept)  --emb_bob---->  carol
    carol: loss = top(emb_alice, emb_bob, labels); loss.backward(); update top
    alice: emb_alice.backward(grad_alice); update bottom  <--grad_alice--  carol
    bob:   emb_bob.backward(grad_bob); update bottom      <--grad_bob----  carol

Both sides run real autograd: a bottom party keeps the graph of its forward pass
and later back-propagates the gradient carol sends. Only embeddings and their
gradients (tensors) cross party boundaries, with rayfed's default configuration;
alice and bob never see the labels or each other's columns, carol never sees any
feature.

Run the three parties on this machine with

    fed run examples/torch_split_learning.py --parties alice,bob,carol
    fed run examples/torch_split_learning.py --parties alice,bob,carol -- --epochs 20
    fed run examples/torch_split_learning.py --parties alice,bob,carol --simulate

Every party prints the loss per epoch, then the test accuracy next to a
centralized model (same network, same initial weights and batches, trained in
one process on all columns with one autograd graph). Split learning computes
the same gradients as centralized training, so the two agree:

    split learning accuracy 0.965 | centralized 0.965
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

import fed

PARTIES = ("alice", "bob", "carol")
FEATURE_PARTIES = ("alice", "bob")
LABEL_PARTY = "carol"

SEED = 0  # fixes the data split, the initial weights and the batch order
TEST_FRACTION = 0.2
HIDDEN = 8  # embedding size of each bottom model
TOP_HIDDEN = 8
DEFAULT_EPOCHS = 15
BATCH_SIZE = 64
LEARNING_RATE = 0.1


def setup_torch() -> None:
    """One thread and deterministic kernels, in the driver and in every Ray worker.

    Three parties share this machine's cores, so one thread each avoids
    oversubscription, and a fixed thread count keeps every result bit-for-bit the
    same in production and in simulation.
    """
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


# --------------------------------------------------------------------------- data

def split_rows(n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the train and test splits (every party computes the same ones).

    In a real deployment the parties would first align their rows on a shared
    record id (private set intersection); here all of them load the same data set.
    """
    order = np.random.default_rng(SEED).permutation(n_rows)
    n_test = round(TEST_FRACTION * n_rows)
    return order[n_test:], order[:n_test]


def column_range(party: str, n_columns: int) -> slice:
    """The feature columns a party holds: alice the first half, bob the rest."""
    half = n_columns // 2
    return slice(0, half) if party == "alice" else slice(half, n_columns)


def load_columns(party: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) features of the columns `party` holds, standardized.

    Each party standardizes its own columns with its own training rows'
    statistics, so no statistics cross the boundary.
    """
    x, y = load_breast_cancer(return_X_y=True)
    train_rows, test_rows = split_rows(len(y))
    x = x[:, column_range(party, x.shape[1])]
    x = (x - x[train_rows].mean(axis=0)) / x[train_rows].std(axis=0)
    return (torch.tensor(x[train_rows], dtype=torch.float32),
            torch.tensor(x[test_rows], dtype=torch.float32))


def load_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) labels as floats; only carol calls this."""
    _, y = load_breast_cancer(return_X_y=True)
    train_rows, test_rows = split_rows(len(y))
    return (torch.tensor(y[train_rows], dtype=torch.float32),
            torch.tensor(y[test_rows], dtype=torch.float32))


def batches(epoch: int, n_train: int) -> list[torch.Tensor]:
    """This epoch's mini-batches (positions in the train split).

    Derived from the shared seed, so every party picks the same rows for batch k
    without talking to the others.
    """
    order = np.random.default_rng([SEED, epoch]).permutation(n_train)
    n_batches = -(-n_train // BATCH_SIZE)  # ceil: batches of at most BATCH_SIZE rows
    return [torch.as_tensor(b) for b in np.array_split(order, n_batches)]


# --------------------------------------------------------------------------- models

def make_bottom(party: str, n_inputs: int) -> nn.Module:
    """A party's bottom model: its columns -> an embedding of HIDDEN numbers."""
    torch.manual_seed(SEED + 1 + FEATURE_PARTIES.index(party))
    return nn.Sequential(nn.Linear(n_inputs, HIDDEN), nn.ReLU())


def make_top() -> nn.Module:
    """carol's top model: both embeddings -> one logit (malignant vs benign)."""
    torch.manual_seed(SEED + 1 + len(FEATURE_PARTIES))
    return nn.Sequential(nn.Linear(2 * HIDDEN, TOP_HIDDEN), nn.ReLU(),
                         nn.Linear(TOP_HIDDEN, 1))


def top_loss(top: nn.Module, emb_alice: torch.Tensor, emb_bob: torch.Tensor,
             y: torch.Tensor) -> torch.Tensor:
    """Mean log-loss of the top model on a batch."""
    logits = top(torch.cat([emb_alice, emb_bob], dim=1)).squeeze(1)
    return nn.functional.binary_cross_entropy_with_logits(logits, y)


def top_accuracy(top: nn.Module, emb_alice: torch.Tensor, emb_bob: torch.Tensor,
                 y: torch.Tensor) -> float:
    with torch.no_grad():
        logits = top(torch.cat([emb_alice, emb_bob], dim=1)).squeeze(1)
    return float(((logits > 0).float() == y).float().mean())


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)


# --------------------------------------------------------------------------- fed parts

@fed.remote
class BottomParty:
    """A feature party's columns and bottom model; its rows never leave this actor."""

    def __init__(self, party: str) -> None:
        setup_torch()
        self.x_train, self.x_test = load_columns(party)
        self.model = make_bottom(party, self.x_train.shape[1])
        self.optimizer = sgd(self.model)
        self.pending: torch.Tensor | None = None  # last forward's output, graph kept

    def forward(self, epoch: int, batch: int) -> torch.Tensor:
        """The batch's embedding; the graph stays here until backward() brings its grad."""
        rows = batches(epoch, len(self.x_train))[batch]
        self.pending = self.model(self.x_train[rows])
        return self.pending.detach()  # only the values cross, never the graph

    def backward(self, grad_embedding: torch.Tensor) -> None:
        """Back-propagate d(loss)/d(embedding) from carol through the kept graph; SGD step."""
        if self.pending is None:
            raise RuntimeError("backward() without a forward() whose gradient is due")
        self.optimizer.zero_grad()
        self.pending.backward(grad_embedding)
        self.optimizer.step()
        self.pending = None

    def embed_test(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model(self.x_test)


@fed.remote
class TopParty:
    """carol's top model and the labels."""

    def __init__(self) -> None:
        setup_torch()
        self.y_train, self.y_test = load_labels()
        self.model = make_top()
        self.optimizer = sgd(self.model)

    def step(self, epoch: int, batch: int, emb_alice: torch.Tensor,
             emb_bob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One SGD step of the top model; the gradients w.r.t. both embeddings and the loss."""
        rows = batches(epoch, len(self.y_train))[batch]
        # The received embeddings are leaves of carol's graph: autograd fills their .grad.
        emb_alice = emb_alice.detach().requires_grad_()
        emb_bob = emb_bob.detach().requires_grad_()
        loss = top_loss(self.model, emb_alice, emb_bob, self.y_train[rows])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return emb_alice.grad, emb_bob.grad, loss.item()

    def test_accuracy(self, emb_alice: torch.Tensor, emb_bob: torch.Tensor) -> float:
        return top_accuracy(self.model, emb_alice, emb_bob, self.y_test)


# --------------------------------------------------------------------------- driver

def centralized_accuracy(epochs: int) -> float:
    """Baseline: the same network trained in one process with every column.

    This pools all parties' data, which a real federation cannot do: it exists
    only to show that split learning loses nothing. One autograd graph spans the
    bottoms and the top.
    """
    (xa_train, xa_test), (xb_train, xb_test) = load_columns("alice"), load_columns("bob")
    y_train, y_test = load_labels()
    bottom_a = make_bottom("alice", xa_train.shape[1])
    bottom_b = make_bottom("bob", xb_train.shape[1])
    top = make_top()
    optimizers = [sgd(m) for m in (bottom_a, bottom_b, top)]
    for epoch in range(epochs):
        for rows in batches(epoch, len(y_train)):
            loss = top_loss(top, bottom_a(xa_train[rows]), bottom_b(xb_train[rows]),
                            y_train[rows])
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
    with torch.no_grad():
        return top_accuracy(top, bottom_a(xa_test), bottom_b(xb_test), y_test)


def train_epoch(epoch: int, n_train: int, bottoms: Sequence[Any],
                top: Any) -> list[fed.FedObject]:
    """Submit one epoch of split-learning steps to the parties' actors (alice's and bob's
    BottomParty, carol's TopParty); the fed objects of the batch losses."""
    losses = []
    for batch in range(len(batches(epoch, n_train))):
        emb_alice, emb_bob = (b.forward.remote(epoch, batch) for b in bottoms)
        # Both embeddings are pushed to carol; the gradients are pushed back.
        grad_alice, grad_bob, loss = top.step.options(num_returns=3).remote(
            epoch, batch, emb_alice, emb_bob)
        bottoms[0].backward.remote(grad_alice)
        bottoms[1].backward.remote(grad_bob)
        losses.append(loss)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("party", choices=PARTIES, help="the party this process runs")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs (default {DEFAULT_EPOCHS})")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    setup_torch()

    # `fed run` passes the parties' addresses in the environment (RAYFED_ADDRESSES).
    fed.init(address="local", party=args.party)
    started = time.monotonic()

    # A public fact every party agrees on: how many training rows there are.
    n_train = len(split_rows(len(load_breast_cancer().target))[0])
    bottoms = [BottomParty.party(p).remote(p) for p in FEATURE_PARTIES]
    top = TopParty.party(LABEL_PARTY).remote()

    for epoch in range(args.epochs):
        losses = train_epoch(epoch, n_train, bottoms, top)
        # Actor calls run in submission order, so the next epoch's forward() calls
        # see the updated weights; fetching the losses only paces the output.
        print(f"epoch {epoch + 1:2d}/{args.epochs}: loss {np.mean(fed.get(losses)):.4f}")

    split_acc = fed.get(top.test_accuracy.remote(*(b.embed_test.remote() for b in bottoms)))
    elapsed = time.monotonic() - started

    central_acc = centralized_accuracy(args.epochs)
    print(f"{args.epochs} epochs of {len(batches(0, n_train))} batches in {elapsed:.1f} s")
    print(f"split learning accuracy {split_acc:.3f} | centralized {central_acc:.3f}")

    fed.shutdown()


if __name__ == "__main__":
    main()
