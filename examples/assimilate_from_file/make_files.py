"""Make the observation and truth files of this example (already committed).

A Lorenz-96 truth (n = 40, F = 8, dt = 0.05) observed at the 20 even grid
points every model step for 300 steps, with observation error std 1 and
one observation in ten missing at random. Writes observations.csv (one row
per observation: time, position, value, error_variance; a missing value is
an empty field) and truth.csv (time, x0 … x39).

    python examples/assimilate_from_file/make_files.py
"""

from __future__ import annotations

import os

import jax
import numpy as np

from enkit.models import Lorenz96, twin_experiment

HERE = os.path.dirname(os.path.abspath(__file__))


def main(cycles: int = 300, seed: int = 7) -> None:
    with jax.enable_x64(True):
        model = Lorenz96(n=40, F=8.0, dt=0.05)
        H = np.eye(40)[::2]
        x0 = np.full(40, 8.0)
        x0[0] += 1.0
        twin = twin_experiment(model, x0, key=seed, n_obs=cycles, h=H, R=1.0, spinup=1000)
        times = np.asarray(twin.times)
        y = np.asarray(twin.observations)
        truth = np.asarray(twin.truth)
    missing = np.random.default_rng(seed).random(y.shape) < 0.1
    positions = np.arange(0, 40, 2)
    with open(os.path.join(HERE, "observations.csv"), "w") as f:
        f.write("time,position,value,error_variance\n")
        for k, t in enumerate(times):
            for j, p in enumerate(positions):
                value = "" if missing[k, j] else f"{y[k, j]:.6f}"
                f.write(f"{t:.2f},{p},{value},1.0\n")
    with open(os.path.join(HERE, "truth.csv"), "w") as f:
        f.write("time," + ",".join(f"x{i}" for i in range(40)) + "\n")
        for t, x in zip(times, truth):
            f.write(f"{t:.2f}," + ",".join(f"{v:.6f}" for v in x) + "\n")
    print(f"wrote observations.csv and truth.csv in {HERE}")


if __name__ == "__main__":
    main()
