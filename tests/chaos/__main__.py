"""`make chaos`: python -m tests.chaos [--seconds 300] [--seed N]; exit 1 on any loss."""

from __future__ import annotations

import argparse
import logging
import sys

from tests.chaos.soak import run_soak


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = run_soak(args.seconds, args.seed)
    print(report.summary())
    ok = report.verify_exit == 0 and not report.duplicated and not report.out_of_order
    ok = ok and not report.unexpected_exits and not report.workload_errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
