"""`reconciler emulator`: its options, and serving until interrupted."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import TextIO

from reconciler.argtypes import number_in
from reconciler.model import ReconcilerError

_rate = number_in(float, 0.0, 1.0, "a probability")
_port = number_in(int, 0, 65535, "a port number")
_milliseconds = number_in(float, 0.0, 600_000.0, "a latency", "ms")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `reconciler emulator`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=_port, default=8787, help="port (0: pick a free one)")
    parser.add_argument("--latency-ms", type=_milliseconds, default=0.0, metavar="N",
                        help="answer each dispatch request N ms after it arrived (default 0)")
    parser.add_argument("--data", metavar="FILE", help="persist dispatches in this JSON file")
    parser.add_argument("--token", help="accept only this X-Auth-Token (default: any non-empty)")
    parser.add_argument("--seed", type=int, help="seed for fault injection and ids")
    parser.add_argument("--ak", help="verify AK/SK signatures by this access key (with --sk)")
    parser.add_argument("--sk", help="the secret key of --ak (a test value: it shows in ps)")
    parser.add_argument("--iam-user", metavar="NAME",
                        help="serve POST /v3/auth/tokens for this IAM user (with --iam-password "
                        "and --iam-domain) and accept only the tokens it issues")
    parser.add_argument("--iam-password", metavar="PASSWORD", help="the IAM user's password")
    parser.add_argument("--iam-domain", metavar="NAME", help="the IAM user's account name")
    parser.add_argument("--iam-token-ttl", type=float, metavar="SECONDS",
                        help="lifetime of issued tokens (default: 24 h, as IAM's)")
    for fault in ("drop-after-create", "error-before-create", "throttle"):
        parser.add_argument(f"--{fault}-rate", type=_rate, default=0.0, metavar="P",
                            help=f"probability of the {fault.replace('-', ' ')} fault")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_from_args(args: argparse.Namespace, out: TextIO) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM); prints the URL first."""
    from reconciler.emulator.api import Emulator  # noqa: PLC0415  (see the package doc)

    ttl = {} if args.iam_token_ttl is None else {"iam_token_ttl": args.iam_token_ttl}
    try:
        emulator = Emulator(host=args.host, port=args.port, latency_ms=args.latency_ms,
                            data=args.data, token=args.token, seed=args.seed,
                            drop_after_create_rate=args.drop_after_create_rate,
                            error_before_create_rate=args.error_before_create_rate,
                            throttle_rate=args.throttle_rate, ak=args.ak, sk=args.sk,
                            iam_user=args.iam_user, iam_password=args.iam_password,
                            iam_domain=args.iam_domain, **ttl)
    except ValueError as exc:
        raise ReconcilerError(f"emulator: {exc}") from None
    # SIGTERM ends it as Ctrl-C does, saving --data. Set before the URL is printed: whoever
    # read the URL may send it at once.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        try:
            url = emulator.start()
        except OSError as exc:
            raise ReconcilerError(f"emulator: cannot listen on {args.host}:{args.port}: "
                                  f"{exc.strerror or exc}") from None
        print(f"emulator listening on {url} (Ctrl-C to stop)", file=out, flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        emulator.stop()
    return 0
