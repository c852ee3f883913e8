#!/usr/bin/python3
"""Run a command under deploy/docker/seccomp-tern.json without a container engine.

    /usr/bin/python3 deploy/docker/check-seccomp.py [--profile FILE] [--drop NAME ...] -- CMD ...

It loads the profile's rules with libseccomp (Debian: apt-get install python3-seccomp), the
same library runc and crun use, for the native architecture only, and then execs CMD, so CMD
runs under the filter a container would get. --drop removes syscalls from the allowlist, to
check what Tern says when, for example, io_uring is refused. This checks the profile against
Tern itself; what the container runtime does before it execs Tern is not covered.
"""
import argparse
import json
import os
import sys

import seccomp

OPS = {
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_LT": seccomp.LT,
    "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_GE": seccomp.GE,
    "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def action(name, errno_ret, default_errno):
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno_ret if errno_ret is not None else default_errno)
    if name == "SCMP_ACT_KILL":
        return seccomp.KILL
    if name == "SCMP_ACT_LOG":
        return seccomp.LOG
    raise SystemExit(f"unsupported action {name}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default=os.path.join(here, "seccomp-tern.json"))
    ap.add_argument("--drop", nargs="*", default=[], help="syscalls to remove from the profile")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")

    with open(args.profile) as f:
        prof = json.load(f)
    default_errno = prof.get("defaultErrnoRet", 1)
    filt = seccomp.SyscallFilter(defaction=action(prof["defaultAction"], None, default_errno))
    unknown = []
    for rule in prof["syscalls"]:
        act = action(rule["action"], rule.get("errnoRet"), default_errno)
        conds = [
            seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in rule.get("args", [])
        ]
        for name in rule["names"]:
            if name in args.drop:
                continue
            try:
                filt.add_rule(act, name, *conds)
            except (RuntimeError, ValueError):
                # Not a syscall on this architecture (runc skips these too).
                unknown.append(name)
    if unknown:
        print(f"check-seccomp: not on this architecture, skipped: {' '.join(unknown)}",
              file=sys.stderr)
    filt.load()  # also sets no_new_privs, as docker run --security-opt no-new-privileges
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
