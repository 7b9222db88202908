"""The ``neighbpf`` command line.

Exit status: 0 success; 1 a failure at run time, or ``verify`` found a
difference; 2 bad arguments or a missing prerequisite (namespace,
interface, pin directory, privilege, bpffs), reported as one line that
names the problem and the fix.
"""

import argparse
import json
import logging
import signal
import sys

from . import __version__
from .daemon import DEFAULT_PIN_DIR
from .errors import NeighbpfError, UsageError

log = logging.getLogger("neighbpf")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_int(text):
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}; give a positive integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; give a positive integer")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}; give seconds as a positive number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; give seconds as a positive number")
    return value


def _add_common(parser, iface=False):
    parser.add_argument("--netns", metavar="NAME",
                        help="network namespace (as 'ip netns list' shows) whose neighbors are mirrored; "
                             "pins stay in the caller's bpffs (default: the caller's namespace)")
    parser.add_argument("--pin-dir", metavar="DIR", default=DEFAULT_PIN_DIR,
                        help=f"bpffs directory of the pinned maps (default: {DEFAULT_PIN_DIR})")
    if iface:
        parser.add_argument("--iface", metavar="IF", action="append",
                            help="mirror only this interface; repeat for more (default: every interface)")


def build_parser():
    parser = _Parser(prog="neighbpf", description="Mirror the kernel's IPv4 neighbor table into a pinned "
                                                  "BPF map for XDP forwarding.")
    parser.add_argument("--version", action="version", version=f"neighbpf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="follow the neighbor table and serve the XDP forward stage")
    _add_common(run, iface=True)
    run.add_argument("--no-xdp", action="store_true", help="mirror the map only; attach no XDP program")
    run.add_argument("--xdp-mode", choices=["native", "generic"],
                     help="XDP attach mode (default: native where the driver supports it, else generic)")
    run.add_argument("--keep-xdp", action="store_true",
                     help="leave the XDP stage attached on exit, so the fast path never stops across a restart")
    run.add_argument("--max-entries", type=_positive_int, metavar="N",
                     help="size of a newly created neighbor map (default: 65536, or the kernel's gc_thresh3 if larger)")
    run.add_argument("--rcvbuf", type=_positive_int, metavar="BYTES", default=8 * 1024 * 1024,
                     help="event socket receive buffer in bytes (default: 8 MiB)")
    run.add_argument("--reconcile-interval", type=_positive_float, metavar="SECONDS", default=30.0,
                     help="seconds between comparisons of the map with the table (default: 30)")

    sync = sub.add_parser("sync", help="one complete dump into the pinned map, with the sweep")
    _add_common(sync, iface=True)
    sync.add_argument("--once", action="store_true", help="required: dump once and exit")
    sync.add_argument("--json", action="store_true", help="print counts and timings as JSON")
    sync.add_argument("--max-entries", type=_positive_int, metavar="N",
                      help="size of a newly created neighbor map (default: 65536, or the kernel's gc_thresh3 if larger)")

    show = sub.add_parser("show", help="list the pinned map's entries")
    _add_common(show)
    show.add_argument("-j", "--json", action="store_true", help="print a JSON list as 'ip -j neigh' does")

    verify = sub.add_parser("verify", help="compare the kernel's eligible entries with the pinned map")
    _add_common(verify, iface=True)

    stats = sub.add_parser("stats", help="show the daemon's and the XDP stage's counters")
    stats.add_argument("--pin-dir", metavar="DIR", default=DEFAULT_PIN_DIR,
                       help=f"bpffs directory of the pinned maps (default: {DEFAULT_PIN_DIR})")
    stats.add_argument("-j", "--json", action="store_true", help="print JSON")

    demo = sub.add_parser("demo", help="build the lab, run the main job with real traffic, remove the lab")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    demo.add_argument("--addresses", type=_positive_int, default=200, metavar="N",
                      help="addresses the lab's server owns (default: 200, at most 500)")
    demo.add_argument("--packets", type=_positive_int, default=5, metavar="N",
                      help="packets the client sends to each address (default: 5, at least 2)")
    demo.add_argument("--xdp-mode", choices=["native", "generic"],
                      help="XDP attach mode on the lab's router (default: native where it works, else generic)")
    return parser


def _cmd_run(args):
    from .daemon import Daemon

    daemon = Daemon(netns_name=args.netns, iface_names=args.iface, pin_dir=args.pin_dir,
                    xdp=not args.no_xdp, xdp_mode=args.xdp_mode or "auto",
                    max_entries=args.max_entries, rcvbuf_bytes=args.rcvbuf,
                    reconcile_interval_s=args.reconcile_interval, keep_xdp=args.keep_xdp)

    def request_stop(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        daemon.stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    from .api import require_root
    require_root("neighbpf run")
    daemon.start()
    try:
        daemon.run()
    finally:
        daemon.stop()
    return EXIT_OK


def _cmd_sync(args):
    from . import api

    if not args.once:
        raise UsageError("neighbpf sync needs --once; for continuous mirroring use 'neighbpf run'")
    result = api.sync_once(args.netns, args.pin_dir, args.iface, args.max_entries)
    if args.json:
        print(json.dumps({"entries": result.entries, "swept": result.swept,
                          "dump_seconds": round(result.dump_seconds, 6),
                          "mirror_seconds": round(result.mirror_seconds, 6),
                          "not_mirrored": result.not_mirrored}))
    else:
        print(f"{result.entries - result.not_mirrored} neighbors mirrored to {args.pin_dir}, "
              f"{result.swept} stale entries swept "
              f"(dump {result.dump_seconds:.3f} s, mirror {result.mirror_seconds:.3f} s)")
    if result.not_mirrored:
        print(f"neighbpf: {result.not_mirrored} of {result.entries} neighbors not mirrored because the map "
              f"rejected them; if it is full, remove {args.pin_dir} and sync again with a larger --max-entries",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_show(args):
    from . import api

    rows = api.show(args.pin_dir, args.netns)
    if args.json:
        print(json.dumps([row.as_json() for row in rows]))
    else:
        for row in rows:
            print(f"{row.dst} dev {row.dev} lladdr {row.lladdr} {' '.join(row.state)}")
    return EXIT_OK


def _cmd_verify(args):
    from . import api

    differences = api.verify(args.netns, args.pin_dir, args.iface)
    for difference in differences:
        print(difference.describe())
    if differences:
        print(f"{len(differences)} differences between the kernel and {args.pin_dir}")
        return EXIT_FAILURE
    print(f"map at {args.pin_dir} matches the kernel")
    return EXIT_OK


def _cmd_stats(args):
    from . import api

    result = api.stats(args.pin_dir)
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    print("xdp: " + " ".join(f"{name}={value}" for name, value in result["xdp"].items()))
    daemon = result["daemon"]
    if daemon is None:
        print("daemon: not running for this pin directory")
        return EXIT_OK
    print(f"daemon: pid {daemon['pid']}, {daemon['entries']} entries, "
          f"xdp modes {daemon['xdp_modes'] or 'none'}")
    for name, value in sorted(daemon["counters"].items()):
        print(f"  {name} {value}")
    return EXIT_OK


def _cmd_demo(args):
    from .lab import run_demo

    summary = run_demo(addresses=args.addresses, packets=args.packets, xdp_mode=args.xdp_mode or "auto")
    if args.json:
        print(json.dumps({key: summary[key] for key in
                          ("entries", "xdp_hits", "xdp_misses", "map_matches_kernel", "xdp_mode")}))
    else:
        print(summary["text"])
    return EXIT_OK if summary["map_matches_kernel"] and summary["xdp_hits"] > 0 else EXIT_FAILURE


COMMANDS = {"run": _cmd_run, "sync": _cmd_sync, "show": _cmd_show, "verify": _cmd_verify,
            "stats": _cmd_stats, "demo": _cmd_demo}


def main(argv=None):
    """Run the command line; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        if args.command is None:
            raise UsageError("missing command; use one of: " + ", ".join(COMMANDS) + " (see 'neighbpf --help')")
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"neighbpf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NeighbpfError as exc:
        print(f"neighbpf: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("neighbpf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
