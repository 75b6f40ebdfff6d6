#!/usr/bin/env python3
"""Generate deterministic benchmark input as JSON lines.

    gen_data.py N OUT                    # N scientist records for the `age` task
    gen_data.py N OUT --kind primes --n 2000000   # N records {"n": 2000000}
    gen_data.py N -                      # to stdout

Scientist records look like the demo's:
    {"name":"Ada Lovelace 17","field":"math","born":1815,"nobel":"no"}
Names, fields, birth years and the nobel flag vary with the record index, by
plain arithmetic (no RNG), so the same N always gives the same bytes on every
machine and Python version. About 70 bytes a record: 10M records ~ 0.7 GB.
"""

import argparse
import json
import sys

FIRST = [
    "Ada", "Emmy", "Marie", "Tu", "Vera", "Sally", "Rosalind", "Lise", "Chien-Shiung",
    "Dorothy", "Barbara", "Grace", "Katherine", "Hedy", "Mary", "Jocelyn", "Gertrude",
    "Rita", "Henrietta", "Cecilia", "Sofia", "Maryam", "Donna", "Frances", "Alan",
    "Albert", "Niels", "Enrico", "Srinivasa", "Isaac", "Carl", "Leonhard", "Kurt",
    "Paul", "Richard", "Werner", "Erwin", "Max", "Satyendra", "Hideki",
]
LAST = [
    "Lovelace", "Noether", "Curie", "Youyou", "Rubin", "Ride", "Franklin", "Meitner",
    "Wu", "Hodgkin", "McClintock", "Hopper", "Johnson", "Lamarr", "Somerville",
    "Bell Burnell", "Elion", "Levi-Montalcini", "Leavitt", "Payne", "Kovalevskaya",
    "Mirzakhani", "Strickland", "Arnold", "Turing", "Einstein", "Bohr", "Fermi",
    "Ramanujan", "Newton", "Gauss", "Euler", "Gödel", "Dirac", "Feynman",
    "Heisenberg", "Schrödinger", "Planck", "Bose", "Yukawa", "Yonath",
]
FIELDS = ["math", "physics", "chemistry", "astronomy", "biology", "computing", "medicine"]


def scientist_lines(count):
    nf, nl, nd = len(FIRST), len(LAST), len(FIELDS)
    dumps = json.dumps
    for i in range(count):
        # Strides coprime with the list lengths mix the combinations.
        name = f"{FIRST[i % nf]} {LAST[(i * 7 + i // nf) % nl]} {i}"
        yield (
            '{"name":' + dumps(name, ensure_ascii=False)
            + ',"field":"' + FIELDS[(i * 3) % nd]
            + '","born":' + str(1800 + (i * 37) % 210)
            + ',"nobel":"' + ("yes" if i % 5 == 0 else "no") + '"}\n'
        )


def primes_lines(count, n):
    line = '{"n":%d}\n' % n
    for _ in range(count):
        yield line


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("count", type=int, help="number of records")
    ap.add_argument("out", help="output path, or - for stdout")
    ap.add_argument("--kind", choices=["age", "primes"], default="age")
    ap.add_argument("--n", type=int, default=2_000_000, help="n for --kind primes")
    a = ap.parse_args()
    lines = scientist_lines(a.count) if a.kind == "age" else primes_lines(a.count, a.n)
    out = sys.stdout if a.out == "-" else open(a.out, "w", encoding="utf-8", newline="\n")
    try:
        buf = []
        for line in lines:
            buf.append(line)
            if len(buf) >= 65536:
                out.write("".join(buf))
                buf.clear()
        out.write("".join(buf))
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    main()
