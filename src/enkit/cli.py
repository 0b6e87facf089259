"""Command-line interface: ``enkit demo``, ``enkit run CONFIG.toml``,
``enkit report RESULT.nc`` and ``enkit calibrate CONFIG.toml``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import time

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import jax

    # Scoped precision: the library never changes JAX's global configuration.
    with jax.enable_x64(args.dtype == "float64"):
        _run_demo(args)
    return 0


def _run_demo(args: argparse.Namespace) -> None:
    from enkit.demo import DEMO_MODELS, format_summary, twin_demo
    from enkit.plotting import plot_hovmoller, plot_twin_run

    out = twin_demo(
        model=args.model,
        cycles=args.cycles,
        burn_in=args.burn_in,
        members=args.members,
        inflation=None if args.inflation == 1.0 else args.inflation,
        scheme=args.scheme,
        seed=args.seed,
        store=("innovation_chi2",),
    )
    s = out.summary
    print(f"{DEMO_MODELS[args.model][1]}: twin experiment")
    print(format_summary(s))
    title = (f"{args.model}, {s['scheme']} N={s['N']}, inflation {s['inflation']}: "
             f"analysis RMSE {s['analysis_rmse']:.3f}")
    last = slice(-min(args.cycles, 400), None)
    shown = out.result._replace(
        analysis_mean=out.result.analysis_mean[last],
        analysis_spread=out.result.analysis_spread[last],
    )
    plot_twin_run(out.twin.truth[last], out.twin.times[last], shown, args.figure,
                  title=title)
    print(f"figure written to {args.figure}")
    stem = os.path.splitext(args.figure)[0]
    err = out.result.analysis_mean[last] - out.twin.truth[last]
    fig = plot_hovmoller(out.twin.times[last], err, title="analysis error (mean − truth)")
    fig.savefig(f"{stem}-hovmoller.png", dpi=100)
    print(f"figure written to {stem}-hovmoller.png")
    output = f"{stem}.nc" if args.output is None else args.output
    if output:
        path = out.result.to_netcdf(output, truth=out.twin.truth,
                                    observations=out.twin.observations)
        print(f"result written to {path} (enkit report {path})")


class _Progress:
    """The per-iteration line ``calibrate``'s callback prints (unless quiet)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t_wall = time.perf_counter()
        self.t_alg = None

    def __call__(self, rec) -> None:
        now = time.perf_counter()
        wall, self.t_wall = now - self.t_wall, now
        dt = "" if self.t_alg is None else f"  Δt {rec.time - self.t_alg:.4g}"
        self.t_alg = rec.time
        if not self.quiet:
            n, bad = rec.failed.size, int(rec.failed.sum())
            print(f"iteration {rec.iteration:3d}  members done {n - bad}/{n} failed {bad}  "
                  f"misfit {rec.misfit:.6g}{dt}  ({wall:.2f} s)", flush=True)


def _open_executor(spec):
    from enkit.executors import dask_executor, process_pool, thread_pool

    kind, value = spec
    if kind == "serial":
        return None
    if kind == "threads":
        return thread_pool(value)
    if kind == "processes":
        return process_pool(value)
    return dask_executor(value)


def _configured(command: str, args: argparse.Namespace, load, key: str, go) -> int:
    """Load the config of ``enkit COMMAND`` with ``load``, settle what an
    existing checkpoint (config key ``key``) means with --resume/--overwrite,
    then run ``go(cfg, args)``; float64 within, scoped (the library never
    changes JAX's global configuration)."""
    import jax

    from enkit.config import ConfigError

    with jax.enable_x64(True):
        try:
            cfg = load(args.config)
        except ConfigError as err:
            print(f"enkit {command}: error in {args.config}: {err}", file=sys.stderr)
            return 2
        if cfg.checkpoint is not None and os.path.exists(cfg.checkpoint):
            if not (args.resume or args.overwrite):
                print(f"enkit {command}: checkpoint {cfg.checkpoint} exists: pass --resume to "
                      "continue that run or --overwrite to start afresh", file=sys.stderr)
                return 2
        elif args.resume:
            print(f"enkit {command}: --resume: no checkpoint to resume at ({key} is not set)"
                  if cfg.checkpoint is None else
                  f"enkit {command}: --resume: no checkpoint to resume at {cfg.checkpoint}",
                  file=sys.stderr)
            return 2
        return go(cfg, args)


def _config_arguments(parser: argparse.ArgumentParser, key: str) -> None:
    """The arguments ``_configured`` reads: the config file and --resume or
    --overwrite for the checkpoint at config key ``key``."""
    parser.add_argument("config", help="the TOML configuration file")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help=f"continue the run saved at {key}")
    what.add_argument("--overwrite", action="store_true",
                      help=f"start afresh even if {key} exists")


def _calibrate(args: argparse.Namespace) -> int:
    from enkit.config import load_config

    return _configured("calibrate", args, load_config, "calibration.checkpoint",
                       _run_calibration)


def _run_calibration(cfg, args: argparse.Namespace) -> int:
    from enkit.inversion import calibrate
    from enkit.inversion.failures import ForwardFailure
    from enkit.io import CheckpointError
    from enkit.results_io import calibration_to_xarray, write_netcdf

    if not args.quiet:
        print(f"calibrating {', '.join(cfg.space.names)} with {cfg.process_name} "
              f"(N={cfg.members}, d={cfg.y.size}, executor {cfg.executor[0]})"
              + (" — resuming" if args.resume else ""), flush=True)
    executor = _open_executor(cfg.executor)
    try:
        result = calibrate(
            cfg.forward, cfg.process, cfg.initial_ensemble(), cfg.y, cfg.noise_variance,
            key=cfg.key(), scheduler=cfg.scheduler, max_iterations=cfg.max_iterations,
            tau=cfg.tau, collapse_tol=cfg.collapse_tol, failure=cfg.failure,
            executor=executor, black_box=True, callback=_Progress(args.quiet),
            checkpoint=cfg.checkpoint, resume=bool(args.resume))
    except CheckpointError as err:  # found before any model run: an input problem
        print(f"enkit calibrate: error in {cfg.checkpoint}: {err}", file=sys.stderr)
        return 2
    except ForwardFailure as err:
        print(f"enkit calibrate: {err}", file=sys.stderr)
        return 1
    finally:
        if executor is not None:
            executor.shutdown()
    ds = calibration_to_xarray(result, space=cfg.space, y=cfg.y,
                               noise_variance=cfg.noise_variance, settings=cfg.settings)
    out = write_netcdf(ds, cfg.output)
    if not args.quiet:
        est = ", ".join(f"{n}={float(v):.6g}" for n, v in
                        zip(ds["parameter"].values, ds["final_estimate"].values))
        print(f"stopped by {result.stopped_by} after {result.n_iterations} iterations; "
              f"misfit {float(result.misfits[-1]):.6g}; estimate {est}")
        print(f"results written to {out}")
    return 0


def _add_calibrate(sub) -> None:
    from enkit.config import keys_help

    cal = sub.add_parser(
        "calibrate", help="calibrate a model from a TOML configuration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("Calibrate a model's named, bounded parameters with an ensemble Kalman "
                    "process, as the TOML file says; prints one line per iteration and "
                    "writes the results to netCDF. Relative paths in the file are relative "
                    "to its directory. An external command receives the constrained "
                    "parameter values in {input}, a JSON object name -> value, and writes "
                    "d numbers to {output}. An existing checkpoint is refused unless --resume or "
                    "--overwrite is given.", width=79),
        epilog=keys_help())
    _config_arguments(cal, "calibration.checkpoint")
    cal.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    cal.add_argument("--log-level", choices=["WARNING", "INFO", "DEBUG"], default=None,
                     help="show enkit's log records at this level (default: none)")
    cal.set_defaults(func=_calibrate)


def _run(args: argparse.Namespace) -> int:
    from enkit.run_config import load_run_config

    return _configured("run", args, load_run_config, "run.checkpoint", _run_assimilation)


def _run_assimilation(cfg, args: argparse.Namespace) -> int:
    from enkit.assimilation import NonFiniteError, assimilate
    from enkit.io import CheckpointError
    from enkit.report import format_table, summarize

    obs = cfg.observations
    if not args.quiet:
        K, m = obs.values.shape
        print(f"assimilating {K} analysis times ({m} observation slots) with "
              f"{cfg.scheme_name}, N={cfg.E0.shape[0]}, n={cfg.E0.shape[1]}"
              + (" — resuming" if args.resume else ""), flush=True)
    kwargs = cfg.assimilate_kwargs()
    try:
        result = assimilate(cfg.model, cfg.E0, resume=bool(args.resume),
                            progress=not args.quiet, **kwargs)
    except CheckpointError as err:  # found before any model run: an input problem
        print(f"enkit run: error in {cfg.checkpoint}: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:
        print(f"enkit run: {err}", file=sys.stderr)
        return 1
    ds = result.to_xarray(truth=cfg.truth, observations=obs.values, mask=obs.mask,
                          settings=cfg.settings)
    from enkit.results_io import write_netcdf

    out = write_netcdf(ds, cfg.output)
    if not args.quiet:
        print(format_table(summarize(ds)))
        print(f"result written to {out} (enkit report {out})")
    return 0


def _add_run(sub) -> None:
    from enkit.run_config import run_keys_help

    run = sub.add_parser(
        "run", help="run an assimilation from a TOML configuration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Assimilate an observation file (netCDF or CSV: enkit.read_observations) into "
            "a model (built-in or a Python module:function) as the TOML file says, and "
            "write the result to netCDF (read it with `enkit report`). Everything in the "
            "file is checked before the model runs. Relative paths are relative to the "
            "file's directory. An existing checkpoint is refused unless --resume or "
            "--overwrite is given.", width=79),
        epilog=run_keys_help())
    _config_arguments(run, "run.checkpoint")
    run.add_argument("--quiet", "-q", action="store_true",
                     help="no progress bar and no summary")
    run.set_defaults(func=_run)


def _report(args: argparse.Namespace) -> int:
    from enkit.report import format_table, standard_figures, summarize
    from enkit.results_io import read_netcdf

    try:
        ds = read_netcdf(args.result)
    except (OSError, ValueError) as err:
        print(f"enkit report: cannot read {args.result}: {err}", file=sys.stderr)
        return 2
    try:
        rows = summarize(ds, burn_in=args.burn_in)
    except ValueError as err:
        print(f"enkit report: {args.result}: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.no_figures:
        return 0
    if not 0 <= args.variable < ds.sizes.get("state", 1):
        print(f"enkit report: --variable {args.variable} is not a state index "
              f"(0..{ds.sizes.get('state', 1) - 1})", file=sys.stderr)
        return 2
    folder = args.figures or os.path.dirname(os.path.abspath(args.result))
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.result))[0]
    for name, fig in standard_figures(ds, variable=args.variable).items():
        path = os.path.join(folder, f"{stem}-{name}.png")
        fig.savefig(path, dpi=args.dpi)
        print(f"figure written to {path}")
    return 0


def _add_report(sub) -> None:
    rep = sub.add_parser(
        "report", help="summary table and standard figures of a saved result",
        description=textwrap.fill(
            "Print a summary table of a result written by `enkit run`, `enkit demo`, "
            "`enkit calibrate` or a result's .to_netcdf(), and write its standard figures "
            "as PNG files named RESULT-NAME.png.", width=79))
    rep.add_argument("result", help="the netCDF result file")
    rep.add_argument("--figures", metavar="DIR", default=None,
                     help="folder of the figures (default: the result's folder)")
    rep.add_argument("--no-figures", action="store_true", help="the table only")
    rep.add_argument("--burn-in", type=int, default=0,
                     help="analysis times left out of the time means (default 0)")
    rep.add_argument("--variable", type=int, default=0,
                     help="state index shown in the time-series figure (default 0)")
    rep.add_argument("--dpi", type=int, default=100, help="figure resolution (default 100)")
    rep.set_defaults(func=_report)


def build_parser() -> argparse.ArgumentParser:
    from enkit.filters import SCHEMES

    parser = argparse.ArgumentParser(prog="enkit", description="Ensemble Kalman methods.")
    sub = parser.add_subparsers(dest="command", required=True)
    from enkit.demo import DEMO_MODELS

    demo = sub.add_parser("demo", help="twin experiment: table, figures and a netCDF result")
    demo.add_argument("--model", choices=sorted(DEMO_MODELS), default="lorenz96",
                      help="the system (default lorenz96)")
    demo.add_argument("--cycles", type=int, default=5000, help="analysis cycles (default 5000)")
    demo.add_argument("--burn-in", type=int, default=500,
                      help="cycles left out of the time means (default 500)")
    demo.add_argument("--members", "-N", type=int, default=40, help="ensemble size (default 40)")
    demo.add_argument("--inflation", type=float, default=1.02,
                      help="multiplicative inflation, 1 for none (default 1.02)")
    demo.add_argument("--method", "--scheme", dest="scheme", choices=sorted(SCHEMES),
                      default="etkf", help="analysis scheme (default etkf)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                      help="floating precision of the run (default float64)")
    demo.add_argument("--figure", default="enkit-demo.png",
                      help="PNG file to write (default enkit-demo.png; the Hovmöller "
                           "diagram of the analysis error goes to enkit-demo-hovmoller.png)")
    demo.add_argument("--output", default=None,
                      help="netCDF file of the result (default: the figure's name with .nc, "
                           "enkit-demo.nc; '' for none)")
    demo.set_defaults(func=_demo)
    _add_run(sub)
    _add_report(sub)
    _add_calibrate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "log_level", None):
        logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
