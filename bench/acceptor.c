/* acceptor.c - the real servers of bench_peer.py: one listening socket answers TCP health checks for
 * every address of a `local` route, and records when each check arrived, from which director, to which
 * server, so both checkers' interval accuracy is measured by one observer.
 *
 *   acceptor PORT OUTFILE     (SIGTERM: write "seconds src dst" per accepted connection, then exit)
 *
 * Written in C because a Python accept loop cannot keep up with 20,000 checks a second under qemu TCG.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct rec { double t; uint32_t src, dst; };
static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv)
{
	if (argc != 3) { fprintf(stderr, "usage: acceptor PORT OUTFILE\n"); return 2; }
	size_t cap = 1 << 20, n = 0;
	struct rec *recs = malloc(cap * sizeof *recs);
	int one = 1, ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (!recs || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 65535)) { perror("acceptor"); return 1; }
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = ls };
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	fprintf(stderr, "acceptor: listening on port %s\n", argv[1]);
	while (!stop) {
		struct epoll_event out;
		if (epoll_wait(ep, &out, 1, 200) <= 0)
			continue;
		for (;;) {
			struct sockaddr_in peer, self;
			socklen_t pl = sizeof peer, sl = sizeof self;
			int c = accept4(ls, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK);
			if (c < 0)
				break;
			getsockname(c, (struct sockaddr *)&self, &sl);
			close(c);
			if (n == cap) {
				cap *= 2;
				recs = realloc(recs, cap * sizeof *recs);
				if (!recs) { perror("acceptor"); return 1; }
			}
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			recs[n++] = (struct rec){ ts.tv_sec + ts.tv_nsec / 1e9, ntohl(peer.sin_addr.s_addr), ntohl(self.sin_addr.s_addr) };
		}
	}
	FILE *f = fopen(argv[2], "w");
	if (!f) { perror(argv[2]); return 1; }
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%.6f %u %u\n", recs[i].t, recs[i].src, recs[i].dst);
	fclose(f);
	fprintf(stderr, "acceptor: %zu connections\n", n);
	return 0;
}
