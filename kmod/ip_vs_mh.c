// SPDX-License-Identifier: GPL-2.0
/*
 * ip_vs_mh (mhd backport): Maglev hashing scheduler for IPVS.
 *
 * Out-of-tree replacement for net/netfilter/ipvs/ip_vs_mh.c.  The lookup
 * table is built exactly as upstream builds it (same size, same hsiphash
 * keys, same permutations, same population order and weight scaling), so
 * a flow maps to the same real server as with the in-tree module, with
 * three deliberate differences (see README.md):
 *
 *  1. the client port is always hashed for TCP, UDP and SCTP, as if the
 *     service had the mh-port flag;
 *  2. destinations with weight 0 get no slots; the table is built from the
 *     current weight of the others (upstream uses last_weight and keeps
 *     the slots of a drained server);
 *  3. there is no fallback: a lookup in an empty table, or hitting an
 *     overloaded server, schedules nothing.
 *
 * Unlike upstream, a rebuild fills a fresh table and publishes it with
 * one RCU pointer swap, so packets never see a half-rebuilt table.
 *
 * Maglev: Eisenbud et al., NSDI 2016, section 3.4.
 */

#define KMSG_COMPONENT "IPVS"
#define pr_fmt(fmt) KMSG_COMPONENT ": " fmt

#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/kernel.h>
#include <linux/slab.h>
#include <linux/skbuff.h>
#include <linux/bitops.h>
#include <linux/gcd.h>
#include <linux/siphash.h>
#include <linux/rcupdate.h>
#include <linux/ip.h>

#include <net/ip_vs.h>

#include "compat.h"

#define MHB_VERSION	"1.0.0-mhd"
#define MHB_VARIANT	"backport"

/* Table sizes: prime number for Kconfig index 8..17 (upstream list). */
#define MHB_INDEX_MIN	8
#define MHB_INDEX_MAX	17
static const unsigned int mhb_primes[MHB_INDEX_MAX - MHB_INDEX_MIN + 1] = {
	251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071
};

static unsigned int tab_index = MHB_DEFAULT_TAB_INDEX;
module_param(tab_index, uint, 0444);
MODULE_PARM_DESC(tab_index,
		 "lookup table size index 8..17 (size = largest prime < 2^index; default CONFIG_IP_VS_MH_TAB_INDEX or 12)");

/* Derived from tab_index at load time. */
static unsigned int mhb_size;	/* M, number of slots */
static unsigned int mhb_bits;	/* upstream IP_VS_MH_TAB_BITS */

/* Read-only parameters: reject any value, also on the insmod line. */
static int mhb_param_set_ro(const char *val, const struct kernel_param *kp)
{
	return -EPERM;
}

static int mhb_param_get_variant(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%s\n", MHB_VARIANT);
}

static int mhb_param_get_size(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%u\n", mhb_size);
}

static const struct kernel_param_ops mhb_variant_ops = {
	.set = mhb_param_set_ro,
	.get = mhb_param_get_variant,
};

static const struct kernel_param_ops mhb_size_ops = {
	.set = mhb_param_set_ro,
	.get = mhb_param_get_size,
};

module_param_cb(variant, &mhb_variant_ops, NULL, 0444);
MODULE_PARM_DESC(variant, "always \"" MHB_VARIANT "\": identifies this out-of-tree module");
module_param_cb(table_size, &mhb_size_ops, NULL, 0444);
MODULE_PARM_DESC(table_size, "lookup table size M in use (read-only)");

/* One immutable lookup table; replaced as a whole on every change. */
struct mhb_table {
	struct rcu_head rcu;
	unsigned int size;
	struct ip_vs_dest *slot[];	/* each holds a dest reference */
};

/* Per-service scheduler state (svc->sched_data). */
struct mhb_state {
	struct rcu_head rcu;
	hsiphash_key_t key_offset;	/* offset hash; also the lookup hash */
	hsiphash_key_t key_skip;	/* skip hash */
	struct mhb_table __rcu *table;	/* NULL: no usable destination */
};

/* Per-destination permutation cursor, used while populating only. */
struct mhb_cursor {
	struct ip_vs_dest *dest;
	unsigned int next;	/* next preferred slot */
	unsigned int skip;	/* permutation step, 1..M-1 */
	unsigned int turns;	/* slots taken per round-robin visit */
};

/* Fixed keys, identical to upstream, so every director agrees. */
static void mhb_set_keys(struct mhb_state *s)
{
	s->key_offset.key[0] = 2654435761UL;
	s->key_offset.key[1] = 2654435761UL;
	s->key_skip.key[0] = 2654446892UL;
	s->key_skip.key[1] = 2654446892UL;
}

/* hsiphash of (port + address) as upstream computes it, IPv6 folded. */
static u32 mhb_hash(int af, const union nf_inet_addr *addr, __be16 port,
		    const hsiphash_key_t *key)
{
	__be32 folded = addr->ip;
	u32 v;

#ifdef CONFIG_IP_VS_IPV6
	if (af == AF_INET6)
		folded = addr->ip6[0] ^ addr->ip6[1] ^
			 addr->ip6[2] ^ addr->ip6[3];
#endif
	v = ntohs(port) + ntohl(folded);
	return hsiphash(&v, sizeof(v), key);
}

static void mhb_table_put_dests(struct mhb_table *t)
{
	unsigned int i;

	for (i = 0; i < t->size; i++) {
		if (t->slot[i]) {
			ip_vs_dest_put(t->slot[i]);
			t->slot[i] = NULL;
		}
	}
}

static void mhb_table_free_rcu(struct rcu_head *head)
{
	kfree(container_of(head, struct mhb_table, rcu));
}

/*
 * Build the table for the current destination list.  Returns 0 and sets
 * *out (NULL when no destination has a positive weight), or -errno.
 * Caller holds the IPVS service mutex (destination list is stable).
 */
static int mhb_build(struct ip_vs_service *svc, struct mhb_state *s,
		     struct mhb_table **out)
{
	struct ip_vs_dest *dest;
	struct mhb_cursor *cur = NULL;
	struct mhb_table *t = NULL;
	unsigned long *taken = NULL;
	unsigned int n_active = 0, filled, i, k;
	unsigned int g = 0;
	int shift, w, max_w = 0, ret = 0;

	*out = NULL;
	if (svc->num_dests > mhb_size)
		return -EINVAL;

	/* gcd and maximum of the positive current weights */
	list_for_each_entry(dest, &svc->destinations, n_list) {
		w = atomic_read(&dest->weight);
		if (w <= 0)
			continue;
		n_active++;
		g = g ? (unsigned int)gcd(g, w) : (unsigned int)w;
		if (w > max_w)
			max_w = w;
	}
	if (!n_active)
		return 0;

	/* Shift so that the largest weight/gcd fits in mhb_bits bits. */
	shift = fls(max_w / (int)g) - (int)mhb_bits;
	if (shift < 0)
		shift = 0;

	cur = kcalloc(n_active, sizeof(*cur), GFP_KERNEL);
	taken = kcalloc(BITS_TO_LONGS(mhb_size), sizeof(*taken), GFP_KERNEL);
	t = kzalloc(sizeof(*t) + mhb_size * sizeof(t->slot[0]), GFP_KERNEL);
	if (!cur || !taken || !t) {
		ret = -ENOMEM;
		goto out;
	}
	t->size = mhb_size;

	/* Permutation of each active destination, in list order (head first). */
	i = 0;
	list_for_each_entry(dest, &svc->destinations, n_list) {
		w = atomic_read(&dest->weight);
		if (w <= 0)
			continue;
		cur[i].dest = dest;
		cur[i].next = mhb_hash(svc->af, &dest->addr, dest->port,
				       &s->key_offset) % mhb_size;
		cur[i].skip = mhb_hash(svc->af, &dest->addr, dest->port,
				       &s->key_skip) % (mhb_size - 1) + 1;
		cur[i].turns = ((unsigned int)w / g) >> shift;
		if (!cur[i].turns)
			cur[i].turns = 1;
		i++;
	}

	/*
	 * Round robin over the destinations; on each visit a destination
	 * claims `turns` slots, each its next preferred free slot.
	 */
	filled = 0;
	for (;;) {
		for (i = 0; i < n_active; i++) {
			for (k = 0; k < cur[i].turns; k++) {
				unsigned int c = cur[i].next;

				while (test_bit(c, taken)) {
					c += cur[i].skip;
					if (c >= mhb_size)
						c -= mhb_size;
				}
				cur[i].next = c;
				__set_bit(c, taken);
				ip_vs_dest_hold(cur[i].dest);
				t->slot[c] = cur[i].dest;
				if (++filled == mhb_size)
					goto done;
			}
		}
	}
done:
	*out = t;
	t = NULL;
out:
	kfree(t);
	kfree(taken);
	kfree(cur);
	return ret;
}

/* Rebuild and publish; on failure the previous table stays in use. */
static int mhb_rebuild(struct ip_vs_service *svc, struct mhb_state *s)
{
	struct mhb_table *new_t, *old_t;
	int ret;

	ret = mhb_build(svc, s, &new_t);
	if (ret) {
#ifdef CONFIG_IP_VS_IPV6
		if (svc->af == AF_INET6)
			pr_warn_ratelimited("MH: lookup table of [%pI6c]:%u not rebuilt: %d\n",
					    &svc->addr.in6, ntohs(svc->port), ret);
		else
#endif
			pr_warn_ratelimited("MH: lookup table of %pI4:%u not rebuilt: %d\n",
					    &svc->addr.ip, ntohs(svc->port), ret);
		return ret;
	}

	old_t = rcu_dereference_protected(s->table, 1);
	rcu_assign_pointer(s->table, new_t);
	if (old_t) {
		/*
		 * Readers may still return a dest from old_t; dests are freed
		 * only after an RCU grace period, as with the in-tree module.
		 */
		mhb_table_put_dests(old_t);
		call_rcu(&old_t->rcu, mhb_table_free_rcu);
	}
	return 0;
}

static void mhb_state_free_rcu(struct rcu_head *head)
{
	kfree(container_of(head, struct mhb_state, rcu));
}

static int mhb_init_svc(struct ip_vs_service *svc)
{
	struct mhb_state *s;
	int ret;

	s = kzalloc(sizeof(*s), GFP_KERNEL);
	if (!s)
		return -ENOMEM;
	mhb_set_keys(s);

	ret = mhb_rebuild(svc, s);
	if (ret) {
		kfree(s);
		return ret;
	}
	svc->sched_data = s;
	return 0;
}

static void mhb_done_svc(struct ip_vs_service *svc)
{
	struct mhb_state *s = svc->sched_data;
	struct mhb_table *t = rcu_dereference_protected(s->table, 1);

	RCU_INIT_POINTER(s->table, NULL);
	if (t) {
		mhb_table_put_dests(t);
		call_rcu(&t->rcu, mhb_table_free_rcu);
	}
	call_rcu(&s->rcu, mhb_state_free_rcu);
}

static int mhb_dest_changed(struct ip_vs_service *svc, struct ip_vs_dest *dest)
{
	return mhb_rebuild(svc, svc->sched_data);
}

/* Client port for TCP, UDP and SCTP (same offset in all three). */
static __be16 mhb_client_port(const struct sk_buff *skb,
			      struct ip_vs_iphdr *iph)
{
	__be16 buf[2];
	const __be16 *ports;

	switch (iph->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		ports = skb_header_pointer(skb, iph->len, sizeof(buf), buf);
		if (unlikely(!ports))
			return 0;
		return ip_vs_iph_inverse(iph) ? ports[1] : ports[0];
	default:
		return 0;
	}
}

static struct ip_vs_dest *mhb_schedule(struct ip_vs_service *svc,
				       const struct sk_buff *skb,
				       struct ip_vs_iphdr *iph)
{
	struct mhb_state *s = svc->sched_data;
	const union nf_inet_addr *caddr;
	struct ip_vs_dest *dest = NULL;
	struct mhb_table *t;
	__be16 cport;

	caddr = ip_vs_iph_inverse(iph) ? &iph->daddr : &iph->saddr;
	cport = mhb_client_port(skb, iph);

	t = rcu_dereference(s->table);
	if (t)
		dest = t->slot[mhb_hash(svc->af, caddr, cport, &s->key_offset) %
			       t->size];

	if (!dest || atomic_read(&dest->weight) <= 0 ||
	    (dest->flags & IP_VS_DEST_F_OVERLOAD)) {
		ip_vs_scheduler_err(svc, "no destination available");
		return NULL;
	}

	IP_VS_DBG_BUF(6, "MH: client %s:%u --> server %s:%u\n",
		      IP_VS_DBG_ADDR(svc->af, caddr), ntohs(cport),
		      IP_VS_DBG_ADDR(dest->af, &dest->addr), ntohs(dest->port));
	return dest;
}

static struct ip_vs_scheduler mhb_scheduler = {
	.name		= "mh",
	.refcnt		= ATOMIC_INIT(0),
	.module		= THIS_MODULE,
	.n_list		= LIST_HEAD_INIT(mhb_scheduler.n_list),
	.init_service	= mhb_init_svc,
	.done_service	= mhb_done_svc,
	.add_dest	= mhb_dest_changed,
	.del_dest	= mhb_dest_changed,
	.upd_dest	= mhb_dest_changed,
	.schedule	= mhb_schedule,
};

static int __init mhb_init(void)
{
	if (tab_index < MHB_INDEX_MIN || tab_index > MHB_INDEX_MAX) {
		pr_err("MH: tab_index=%u out of range %d..%d\n",
		       tab_index, MHB_INDEX_MIN, MHB_INDEX_MAX);
		return -EINVAL;
	}
	mhb_size = mhb_primes[tab_index - MHB_INDEX_MIN];
	mhb_bits = tab_index / 2;

	pr_info("MH: Maglev scheduler %s (%s), table size %u\n",
		MHB_VERSION, MHB_VARIANT, mhb_size);
	return register_ip_vs_scheduler(&mhb_scheduler);
}

static void __exit mhb_exit(void)
{
	unregister_ip_vs_scheduler(&mhb_scheduler);
	/* wait for pending table/state frees that point into this module */
	rcu_barrier();
}

module_init(mhb_init);
module_exit(mhb_exit);

MODULE_DESCRIPTION("Maglev hashing IPVS scheduler (mhd backport: port always hashed, weight 0 ignored, no fallback)");
MODULE_LICENSE("GPL");
MODULE_VERSION(MHB_VERSION);
MODULE_AUTHOR("mhd project");
