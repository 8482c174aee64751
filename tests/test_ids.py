"""llmgateway/ids.py: ids unique within a process, across a fork, and valid as UUIDs."""

import os
import uuid

from llmgateway.ids import unique_hex


def test_ids_are_unique_uuid_hex_and_differ_in_a_forked_child():
    made = [unique_hex() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert all(uuid.UUID(i).hex == i for i in made[:10])
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its ids must not repeat the parent's
        os.write(write, unique_hex().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    ours = unique_hex()
    assert len(theirs) == 32 and theirs[:16] != ours[:16]
