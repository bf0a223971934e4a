"""Seeds corpus/pickle_decode: the three bombs of shared/research/pool-manager-pickle.md and
CPython's own pickles of plain values at protocols 0 to 5. Run from fuzz/: python3 seed_pickle.py"""
import collections, os, pickle, struct

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "pickle_decode")
os.makedirs(out, exist_ok=True)

def put(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)

# A list memoized, then 20 000 references to it (nested twice: the expansion multiplies).
bomb = bytearray(b"\x80\x04]\x94")
for level in range(2):
    bomb += b"](" + (b"j" + struct.pack("<I", level)) * 20000 + b"e\x94"
put("bomb-memo", bytes(bomb) + b".")
put("bomb-marks", b"\x80\x04" + b"(" * 200000 + b".")
put("bomb-nesting", b"\x80\x04" + b"]" * 100000 + b"a" * 99999 + b".")

values = [
    None, True, 7, -1, 2**31, 2**64, -(2**100), 1.5, float("inf"), "text", "üñí", b"bytes",
    bytearray(b"ba"), (1, 2), [1, [2, [3]]], {"a": 1, "b": [None]}, {1, 2}, frozenset({3}),
    {"id": 1, "name": "x", "values": [1, 2], "nested": [(1, "a")]}, (7, "s", b"\x00\x01"),
    collections.OrderedDict(a=1),
]
for proto in range(6):
    for i, v in enumerate(values):
        put(f"py-{proto}-{i}", pickle.dumps(v, protocol=proto))
