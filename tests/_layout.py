"""Layout version 2 of a segment file, for tests that scribble on one
(test_check, test_fuzz, test_recovery).  The offsets are those pinned by the
_Static_asserts in ext/ar_internal.h and tabled in docs/design.md section 2;
Raw verifies them against what the library reports before anyone writes."""
import mmap
import struct

U64, U32 = struct.Struct("<Q"), struct.Struct("<I")
HDR = 1536
ENTRY = 256
HEAD, TAIL = 192, 384          # + 64 * ring (free 0, ready 1, requeue 2)
NOT_EMPTY, NOT_FULL = 576, 640
E_WORD, E_TAKE, E_TAKE_WORD, E_PUSH, E_PUSH_WORD = 0, 24, 32, 40, 48
S_WORD, S_LEASE, S_USE, S_LEN, S_CRC, S_PUB = 0, 8, 16, 24, 28, 32


def slot_word(state, owner, gen, use):
    return (use << 32) | (gen << 16) | (owner << 3) | state


def ring_bytes(cap):
    return (cap * 8 + 127) // 128 * 128


class Raw:
    """A second mapping of a queue's file, for reading and scribbling."""

    def __init__(self, q):
        self.f = open(q.path, "r+b")
        self.m = mmap.mmap(self.f.fileno(), 0)
        h = q._seg.raw_header()
        self.cap, self.max_clients, self.slot_size = h["capacity"], h["max_clients"], h["slot_size"]
        self.rings = HDR + self.max_clients * ENTRY
        self.slots = self.rings + 3 * ring_bytes(self.cap)
        assert self.slots + self.cap * self.slot_size == h["total_size"], "layout changed"
        assert self.get(U64, 0) == h["magic"]
        for r in range(3):
            assert (self.get(U64, self.head(r)), self.get(U64, self.tail(r))) == (h["head"][r], h["tail"][r])
            assert [self.get(U64, self.cell(r, j)) for j in range(self.cap)] == q._seg.raw_cells(r)
        for i, row in enumerate(q._seg.raw_slots()):
            assert (self.get(U64, self.slot(i)), self.get(U64, self.slot(i, S_USE)),
                    self.get(U32, self.slot(i, S_LEN))) == (row[0], row[2], row[3]), "slot layout changed"
        for e in q._seg.entries():
            assert self.get(U64, self.entry(e["index"])) == e["word"], "entry layout changed"

    def get(self, st, off):
        return st.unpack_from(self.m, off)[0]

    def put(self, st, off, v):
        old = self.get(st, off)
        st.pack_into(self.m, off, v)
        return old

    def head(self, r):
        return HEAD + 64 * r

    def tail(self, r):
        return TAIL + 64 * r

    def cell(self, r, j):
        return self.rings + r * ring_bytes(self.cap) + 8 * j

    def slot(self, i, field=0):
        return self.slots + i * self.slot_size + field

    def entry(self, index, field=0):
        return HDR + index * ENTRY + field

    def close(self):
        self.m.close()
        self.f.close()
