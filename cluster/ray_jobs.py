"""`ssb jobs status|logs|stop|list`: look after the Ray Jobs that `ssb submit` started (not the service's curation jobs).

    ssb jobs status raysubmit_XYZ --address http://HEAD:8265
    ssb jobs logs raysubmit_XYZ --follow
    ssb jobs stop raysubmit_XYZ
    ssb jobs list

Connection and token as for `ssb submit` (cluster/submit.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cluster.submit import TERMINAL, add_connection_args, exit_code, follow, make_client, report_end, wait


def cmd_jobs(args: argparse.Namespace) -> int:
    client = make_client(args.address, args.token_file)
    action = args.jobs_action
    if action == "list":
        for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{job.submission_id or job.job_id}  {job.status.value:<9}  {job.entrypoint}")
        return 0
    if action == "status":
        info = client.get_job_info(args.job_id)
        print(f"{args.job_id}: {info.status.value}")
        if info.message:
            print(info.message.strip())
        return 0
    if action == "logs":
        if not args.follow:
            sys.stdout.write(client.get_job_logs(args.job_id))
            return 0
        status = follow(client, args.job_id)
        report_end(client, args.job_id, status)
        return exit_code(status)
    # stop
    status = client.get_job_status(args.job_id).value
    if status in TERMINAL:
        print(f"{args.job_id}: already {status}")
        return 0
    client.stop_job(args.job_id)
    if args.no_wait:
        print(f"{args.job_id}: stop requested")
        return 0
    print(f"{args.job_id}: {wait(client, args.job_id, poll_s=1.0)}")
    return 0


def add_parser(sub: Any) -> None:
    help_text = "status, logs, stop or list Ray jobs on a cluster"
    p = sub.add_parser("jobs", help=help_text, description=help_text)
    actions = p.add_subparsers(dest="jobs_action", required=True)
    for name, text in (("status", "the job's status and message"), ("logs", "the job's logs so far"),
                       ("stop", "stop the job and wait until it has stopped"), ("list", "all jobs of the cluster")):
        a = actions.add_parser(name, help=text, description=text)
        if name != "list":
            a.add_argument("job_id", metavar="ID", help="submission id printed by `ssb submit`")
        if name == "logs":
            a.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")
        if name == "stop":
            a.add_argument("--no-wait", dest="no_wait", action="store_true", help="return once the stop is requested")
        add_connection_args(a)
    p.set_defaults(fn=cmd_jobs)
