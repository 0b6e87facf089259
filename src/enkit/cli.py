"""Command-line interface: ``enkit demo``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import jax

    # Scoped precision: the library never changes JAX's global configuration.
    with jax.enable_x64(args.dtype == "float64"):
        _run_demo(args)
    return 0


def _run_demo(args: argparse.Namespace) -> None:
    from enkit.demo import format_summary, lorenz96_demo
    from enkit.plotting import plot_twin_run

    out = lorenz96_demo(
        cycles=args.cycles,
        burn_in=args.burn_in,
        members=args.members,
        inflation=args.inflation,
        scheme=args.scheme,
        seed=args.seed,
    )
    s = out.summary
    print("Lorenz-96 twin experiment (n=40, F=8, obs every 0.05, R=I)")
    print(format_summary(s))
    title = (f"Lorenz-96, {s['scheme']} N={s['N']}, inflation {s['inflation']}: "
             f"analysis RMSE {s['analysis_rmse']:.3f}")
    last = slice(-min(args.cycles, 400), None)
    shown = out.result._replace(
        analysis_mean=out.result.analysis_mean[last],
        analysis_spread=out.result.analysis_spread[last],
    )
    plot_twin_run(out.twin.truth[last], out.twin.times[last], shown, args.figure,
                  title=title)
    print(f"figure written to {args.figure}")


def build_parser() -> argparse.ArgumentParser:
    from enkit.filters import SCHEMES

    parser = argparse.ArgumentParser(prog="enkit", description="Ensemble Kalman methods.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Lorenz-96 twin experiment: table and figure")
    demo.add_argument("--cycles", type=int, default=5000, help="analysis cycles (default 5000)")
    demo.add_argument("--burn-in", type=int, default=500,
                      help="cycles left out of the time means (default 500)")
    demo.add_argument("--members", "-N", type=int, default=40, help="ensemble size (default 40)")
    demo.add_argument("--inflation", type=float, default=1.02,
                      help="multiplicative inflation (default 1.02)")
    demo.add_argument("--scheme", choices=sorted(SCHEMES), default="etkf",
                      help="analysis scheme (default etkf)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                      help="floating precision of the run (default float64)")
    demo.add_argument("--figure", default="enkit-demo.png",
                      help="PNG file to write (default enkit-demo.png)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
