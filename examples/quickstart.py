"""The seed README's quick start: two parties, an actor in each, a sum in bob.

Run it with `fed run examples/quickstart.py --parties alice,bob`, or by hand in two
terminals: `python examples/quickstart.py alice` and `python examples/quickstart.py bob`.
"""
import os
import sys

import fed


@fed.remote
class MyActor:
    def __init__(self, value):
        self.value = value

    def inc(self, num):
        self.value = self.value + num
        return self.value


@fed.remote
def aggregate(val1, val2):
    return val1 + val2


def main(party):
    cluster = {
        'alice': {'address': '127.0.0.1:20010'},
        'bob': {'address': '127.0.0.1:20011'},
    }
    if 'RAYFED_ADDRESSES' in os.environ:  # started by `fed run`, which chose the ports
        cluster = None
    fed.init(address='local', cluster=cluster, party=party)

    actor_alice = MyActor.party("alice").remote(1)
    actor_bob = MyActor.party("bob").remote(1)

    val_alice = actor_alice.inc.remote(1)
    val_bob = actor_bob.inc.remote(2)

    sum_val_obj = aggregate.party("bob").remote(val_alice, val_bob)
    result = fed.get(sum_val_obj)
    print(f"The result in party {party} is {result}")

    fed.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python quickstart.py PARTY   (alice or bob)")
    main(sys.argv[1])
