"""FedObject: the handle every party holds for the output of one call."""
from __future__ import annotations

import ray


class FedObject:
    """The output of a `.remote()` call, owned by one party.

    In the owner party it wraps the Ray ObjectRef of the task's result. In every
    other party it starts empty and holds the ref of the received value once the
    owner pushed it here (so a value crosses to a party at most once).
    """

    __slots__ = ("_party", "_seq_id", "_index", "_call", "_ref", "_sent_to", "_received",
                 "_generation", "__weakref__")

    def __init__(
        self,
        party: str,
        seq_id: int,
        call: str,
        ref: ray.ObjectRef | None = None,
        index: int = 0,
        generation: object | None = None,
    ) -> None:
        self._party = party
        self._seq_id = seq_id
        self._index = index
        self._call = call
        self._ref = ref
        self._sent_to: set[str] = set()  # parties this value was routed to (every party tracks)
        self._received: dict[str, ray.ObjectRef] = {}  # party -> ref of the received value
        self._generation = generation  # the fed.init that made it (stale after shutdown)

    def get_party(self) -> str:
        """The party that owns (computed) this value."""
        return self._party

    def get_fed_task_id(self) -> str:
        """The call's sequence id (and return index), identical in every party."""
        return f"{self._seq_id}#{self._index}"

    def get_ray_object_ref(self) -> ray.ObjectRef | None:
        """The local Ray ref: the result in the owner, the received value elsewhere
        (None until this party received it)."""
        if self._ref is not None:
            return self._ref
        return next(iter(self._received.values()), None)

    @property
    def call(self) -> str:
        return self._call

    def __repr__(self) -> str:
        state = "local" if self.get_ray_object_ref() is not None else "remote"
        return (
            f"FedObject(party={self._party!r}, call={self._call!r}, "
            f"id={self.get_fed_task_id()}, {state})"
        )

    def __reduce__(self):
        from fed.errors import FedError

        raise FedError(
            "a FedObject cannot be pickled: pass it as an argument of a fed task (top level "
            "or nested in lists/tuples/dicts) so the engine moves its value, instead of "
            "capturing it in a closure or in an object"
        )
