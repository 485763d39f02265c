#!/usr/bin/python3
"""Runs a command under a seccomp allow list, as a systemd unit's SystemCallFilter= does.

    seccomp_exec.py ALLOW_FILE ERRNO -- COMMAND [ARGS...]

ALLOW_FILE holds one system call name per line (the unit's filter, expanded by
`systemd-analyze syscall-filter`); every other call fails with ERRNO, as with
SystemCallErrorNumber=. Names this kernel or architecture does not know are skipped, as
systemd skips them. The filter needs no_new_privs (setpriv --no-new-privs, as the unit's
NoNewPrivileges=yes) and is inherited by the command and its children (ip, ethtool, nft).
Used by tests/tests/hardening.rs, since systemd-run needs systemd as PID 1.
"""
import os
import sys

import seccomp  # Debian's python3-seccomp (libseccomp's own bindings)


def main() -> int:
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    allow_file, err, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[4:]
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(err))
    with open(allow_file, encoding="ascii") as names:
        for name in (n.strip() for n in names):
            if not name:
                continue
            try:
                f.add_rule(seccomp.ALLOW, name)
            except (ValueError, RuntimeError):
                pass  # not a call of this architecture or libseccomp version
    f.load()
    os.execv(cmd[0], cmd)
    return 127


if __name__ == "__main__":
    sys.exit(main())
