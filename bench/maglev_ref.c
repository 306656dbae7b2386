/* maglev_ref.c - an independent C model of the Linux ip_vs_mh lookup table.
 *
 * Written for mhd as an oracle for mhd/maglev/table.py and as the yardstick for its benchmark. It follows
 * the kernel's behaviour (net/netfilter/ipvs/ip_vs_mh.c, lib/siphash.c) step by step in plain C,
 * so a bug in the numpy model shows up as a slot-level difference instead of hiding behind the
 * same vectorised trick.
 *
 * Build:  gcc -O2 -o maglev_ref bench/maglev_ref.c
 *
 * Input on stdin (whitespace separated):
 *   tab_index bits variant family fallback      bits: 64|32, variant: 0 in-tree|1 backport,
 *                                                family: 4|6 (the service's), fallback: 0|1
 *   n                                            number of destinations, list order (head first)
 *   address port weight last_weight   x n        last_weight: -1 for "same as weight"
 *   q                                            number of lookups
 *   address port                      x q        port: the port the kernel hashes (0 unless
 *                                                mh-port and TCP/UDP/SCTP)
 * Output: one line with the table (destination index per slot, -1 empty), then one line per
 * lookup with the chosen destination index or -1 for "no destination".
 *
 * Benchmark mode:  maglev_ref bench REPS < input
 *   rebuilds the table (hashing, gcd/shift, population) REPS times and prints
 *   "us_per_build <microseconds>" (process CPU time, so that time the scheduler gives to
 *   other processes does not count) and a checksum of the table.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const int tab_primes[] = {251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071};

/* ---- hsiphash: SipHash-1-3 truncated (64-bit kernels), HalfSipHash-1-3 (32-bit kernels) ---- */

static uint64_t rotl64(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }
static uint32_t rotl32(uint32_t x, int b) { return (x << b) | (x >> (32 - b)); }

static void sip_round(uint64_t v[4])
{
	v[0] += v[1]; v[1] = rotl64(v[1], 13); v[1] ^= v[0]; v[0] = rotl64(v[0], 32);
	v[2] += v[3]; v[3] = rotl64(v[3], 16); v[3] ^= v[2];
	v[0] += v[3]; v[3] = rotl64(v[3], 21); v[3] ^= v[0];
	v[2] += v[1]; v[1] = rotl64(v[1], 17); v[1] ^= v[2]; v[2] = rotl64(v[2], 32);
}

static void half_round(uint32_t v[4])
{
	v[0] += v[1]; v[1] = rotl32(v[1], 5); v[1] ^= v[0]; v[0] = rotl32(v[0], 16);
	v[2] += v[3]; v[3] = rotl32(v[3], 8); v[3] ^= v[2];
	v[0] += v[3]; v[3] = rotl32(v[3], 7); v[3] ^= v[0];
	v[2] += v[1]; v[1] = rotl32(v[1], 13); v[1] ^= v[2]; v[2] = rotl32(v[2], 16);
}

/* Hash len bytes at data, byte by byte (little-endian message words), like the generic path. */
static uint32_t hsip64(const unsigned char *data, size_t len, uint64_t k0, uint64_t k1)
{
	uint64_t v[4] = {k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL,
			 k0 ^ 0x6c7967656e657261ULL, k1 ^ 0x7465646279746573ULL};
	uint64_t b = (uint64_t)len << 56, m;
	size_t i, full = len - len % 8;

	for (i = 0; i < full; i += 8) {
		m = 0;
		for (int j = 7; j >= 0; j--)
			m = (m << 8) | data[i + j];
		v[3] ^= m; sip_round(v); v[0] ^= m;
	}
	for (i = full; i < len; i++)
		b |= (uint64_t)data[i] << (8 * (i - full));
	v[3] ^= b; sip_round(v); v[0] ^= b;
	v[2] ^= 0xff;
	sip_round(v); sip_round(v); sip_round(v);
	return (uint32_t)(v[0] ^ v[1] ^ v[2] ^ v[3]);
}

static uint32_t hsip32(const unsigned char *data, size_t len, uint32_t k0, uint32_t k1)
{
	uint32_t v[4] = {k0, k1, k0 ^ 0x6c796765U, k1 ^ 0x74656462U};
	uint32_t b = (uint32_t)len << 24, m;
	size_t i, full = len - len % 4;

	for (i = 0; i < full; i += 4) {
		m = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 |
		    (uint32_t)data[i + 2] << 16 | (uint32_t)data[i + 3] << 24;
		v[3] ^= m; half_round(v); v[0] ^= m;
	}
	for (i = full; i < len; i++)
		b |= (uint32_t)data[i] << (8 * (i - full));
	v[3] ^= b; half_round(v); v[0] ^= b;
	v[2] ^= 0xff;
	half_round(v); half_round(v); half_round(v);
	return v[1] ^ v[3];
}

static int g_bits = 64;

/* hsiphash(&v, sizeof(v), {k, k}): the u32 as it lies in this (little-endian) host's memory. */
static uint32_t mh_hash(uint32_t v, uint32_t k)
{
	unsigned char buf[4];

	memcpy(buf, &v, 4);
	return g_bits == 64 ? hsip64(buf, 4, k, k) : hsip32(buf, 4, k, k);
}

#define LONG_BITS (8 * sizeof(unsigned long))
#define BITMAP_LONGS(bits) (((size_t)(bits) + LONG_BITS - 1) / LONG_BITS)

#define KEY_OFFSET 2654435761U
#define KEY_SKIP 2654446892U

/* ---- addresses ---- */

/* The 32-bit value the kernel feeds the hash for an address, given the service family: the
 * address itself for IPv4, the XOR of the four 32-bit words for IPv6, each in host order. A
 * destination of the other family lies in a zeroed union nf_inet_addr. */
static int fold_address(const char *text, int family, uint32_t *out)
{
	unsigned char raw[16] = {0};
	uint32_t w[4];

	if (inet_pton(AF_INET, text, raw) != 1 && inet_pton(AF_INET6, text, raw) != 1)
		return -1;
	for (int i = 0; i < 4; i++)
		w[i] = (uint32_t)raw[4 * i] << 24 | (uint32_t)raw[4 * i + 1] << 16 |
		       (uint32_t)raw[4 * i + 2] << 8 | raw[4 * i + 3];
	*out = family == 6 ? (w[0] ^ w[1] ^ w[2] ^ w[3]) : w[0];
	return 0;
}

/* ---- the table ---- */

struct dest {
	uint32_t fold;
	uint32_t port;
	long weight;
	long last_weight;
	uint32_t offset, skip, perm;
	long turns;
};

static long gcd_long(long a, long b)
{
	while (b) {
		long t = a % b;
		a = b;
		b = t;
	}
	return a;
}

static int fls_long(long x)
{
	int n = 0;

	while (x) {
		n++;
		x >>= 1;
	}
	return n;
}

/* Rebuild the table: hash every destination, scale the weights, then fill the slots. */
static void build(struct dest *d, int n, int tab_index, int variant, int *table,
		  unsigned long *used)
{
	int size = tab_primes[tab_index - 8];
	int tab_bits = tab_index / 2;
	long g = 0, maxw = 0;
	int shift, filled, i, t;

	for (i = 0; i < n; i++) {
		long w = variant ? d[i].weight : d[i].last_weight;

		if (w > 0)
			g = g ? gcd_long(w, g) : w;
		if (w > maxw)
			maxw = w;
	}
	for (i = 0; i < size; i++)
		table[i] = -1;
	if (g < 1)
		return;
	shift = fls_long(maxw / g) - tab_bits;
	if (shift < 0)
		shift = 0;
	for (i = 0; i < n; i++) {
		long w = variant ? d[i].weight : d[i].last_weight;

		d[i].offset = mh_hash(d[i].port + d[i].fold, KEY_OFFSET) % (uint32_t)size;
		d[i].skip = mh_hash(d[i].port + d[i].fold, KEY_SKIP) % (uint32_t)(size - 1) + 1;
		d[i].perm = d[i].offset;
		d[i].turns = (w / g) >> shift;
		if (!d[i].turns)
			d[i].turns = w != 0;
	}
	/* A bitmap of taken slots, as the kernel keeps (it stays in L1 even for 131071 slots). */
	memset(used, 0, sizeof(unsigned long) * BITMAP_LONGS(size));
	filled = 0;
	for (;;) {
		for (i = 0; i < n; i++) {
			for (t = 0; t < d[i].turns; t++) {
				uint32_t c = d[i].perm;

				while (used[c / LONG_BITS] >> (c % LONG_BITS) & 1) {
					c += d[i].skip;
					if (c >= (uint32_t)size)
						c -= (uint32_t)size;
				}
				d[i].perm = c;
				used[c / LONG_BITS] |= 1UL << (c % LONG_BITS);
				table[c] = i;
				if (++filled == size)
					return;
			}
		}
	}
}

static int available(const struct dest *d) { return d->weight > 0; }

static int lookup(const struct dest *d, const int *table, int size, uint32_t fold, uint32_t port,
		  int fallback)
{
	uint32_t ihash = mh_hash(port + fold, KEY_OFFSET) % (uint32_t)size;
	int idx = table[ihash];

	if (idx < 0)
		return -1;
	if (available(&d[idx]))
		return idx;
	if (!fallback)
		return -1;
	for (uint32_t off = 0; off < (uint32_t)size; off++) {
		uint32_t roff = (off + ihash) % (uint32_t)size;

		idx = table[mh_hash(roff + port + fold, KEY_OFFSET) % (uint32_t)size];
		if (idx < 0)
			return -1;
		if (available(&d[idx]))
			return idx;
	}
	return -1;
}

static double cpu_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	int tab_index, variant, family, fallback, n, q, size, i;
	long reps = 0;
	struct dest *d;
	int *table;
	unsigned long *used;
	char addr[64];

	if (argc == 3 && strcmp(argv[1], "bench") == 0)
		reps = atol(argv[2]);
	if (scanf("%d %d %d %d %d", &tab_index, &g_bits, &variant, &family, &fallback) != 5 ||
	    tab_index < 8 || tab_index > 17 || (g_bits != 64 && g_bits != 32) ||
	    (family != 4 && family != 6) || scanf("%d", &n) != 1 || n < 0) {
		fprintf(stderr, "bad header\n");
		return 2;
	}
	size = tab_primes[tab_index - 8];
	d = calloc((size_t)n + 1, sizeof(*d));
	table = malloc(sizeof(int) * (size_t)size);
	used = malloc(sizeof(unsigned long) * BITMAP_LONGS(size));
	if (!d || !table || !used)
		return 2;
	for (i = 0; i < n; i++) {
		if (scanf("%63s %u %ld %ld", addr, &d[i].port, &d[i].weight, &d[i].last_weight) != 4 ||
		    fold_address(addr, family, &d[i].fold) != 0) {
			fprintf(stderr, "bad destination %d\n", i);
			return 2;
		}
		if (d[i].last_weight < 0)
			d[i].last_weight = d[i].weight;
	}
	if (reps > 0) {
		double t0 = cpu_now(), dt;
		unsigned long sum = 0;

		for (long r = 0; r < reps; r++)
			build(d, n, tab_index, variant, table, used);
		dt = cpu_now() - t0;
		for (i = 0; i < size; i++)
			sum = sum * 31 + (unsigned long)(table[i] + 1);
		printf("us_per_build %.3f\nchecksum %lu\n", dt / (double)reps * 1e6, sum);
		return 0;
	}
	build(d, n, tab_index, variant, table, used);
	for (i = 0; i < size; i++)
		printf(i ? " %d" : "%d", table[i]);
	printf("\n");
	if (scanf("%d", &q) != 1)
		q = 0;
	for (i = 0; i < q; i++) {
		uint32_t fold, port;

		if (scanf("%63s %u", addr, &port) != 2 || fold_address(addr, family, &fold) != 0) {
			fprintf(stderr, "bad lookup %d\n", i);
			return 2;
		}
		printf("%d\n", lookup(d, table, size, fold, port, variant ? 0 : fallback));
	}
	return 0;
}
