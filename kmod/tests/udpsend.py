#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Send UDP datagrams to a virtual service from many client ports.

  udpsend.py SRC DST DPORT FIRST COUNT            one datagram from each port
                                                  FIRST..FIRST+COUNT-1
  udpsend.py SRC DST DPORT FIRST COUNT SECONDS    keep sending from random
                                                  ports of that range for
                                                  SECONDS or until SIGTERM
                                                  (traffic under churn)

IPv6 if DST contains ':'.  Exit status 0 unless a socket call failed for a
reason other than the network dropping the packet.
"""
import errno
import random
import signal
import socket
import sys
import time


def send_from(fam, src, dst, dport, port):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((src, port))
        try:
            s.sendto(b"mhd-smoke", (dst, dport))
        except OSError as e:
            # no route / refused / unreachable after NAT: the scheduling
            # decision was still taken, which is all the test looks at
            if e.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                               errno.ENETUNREACH, errno.EPERM, errno.EINVAL):
                raise
    finally:
        s.close()


def main(argv):
    src, dst, dport, first, count = argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5])
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    if len(argv) > 6:
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        start = time.monotonic()
        end = start + float(argv[6])
        sent = 0
        while not stop and time.monotonic() < end:
            send_from(fam, src, dst, dport, first + random.randrange(count))
            sent += 1
        print("udpsend: %d datagrams in %.0f s" % (sent, time.monotonic() - start))
    else:
        for port in range(first, first + count):
            send_from(fam, src, dst, dport, port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
