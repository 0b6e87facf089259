"""A tiny external forward model for `enkit calibrate` (standard library only).

Usage: python model.py INPUT.json OUTPUT.json

INPUT.json holds the constrained parameter values as a JSON object
(name -> value, the names of the [parameters.*] tables of config.toml).
OUTPUT.json receives the d = 8 model outputs

    g(t) = amplitude * exp(-rate * t) + offset,   t = 0, 0.5, ..., 3.5

(exponential decay towards an offset). If the environment variable
EXAMPLE_RUN_LOG names a file, each run appends one line to it (the tests
use this to check that bad configurations stop before any model run).
"""

import json
import math
import os
import sys


def main(argv):
    inp, out = argv[1], argv[2]
    with open(inp) as f:
        p = json.load(f)
    log = os.environ.get("EXAMPLE_RUN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(p) + "\n")
    times = [0.5 * i for i in range(8)]
    g = [p["amplitude"] * math.exp(-p["rate"] * t) + p["offset"] for t in times]
    with open(out, "w") as f:
        json.dump(g, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
