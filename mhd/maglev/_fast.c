/* _fast.c - the claim loop of ip_vs_mh_populate, compiled, for mhd.maglev.populate.
 *
 * mhd.maglev.table models the kernel's Maglev lookup table slot for slot. Hashing, weights and all
 * checks stay in Python; this module only runs the population loop, which is a chain of
 * dependent claims that numpy cannot vectorise (see mhd/maglev/table.py, _populate_reference, for
 * the loop as the kernel writes it, and bench/README.md for the figures).
 *
 * It is optional: mhd.maglev.table falls back to its numpy builder when this module is not built
 * or MHD_MAGLEV_PURE=1 is set. It uses only the limited (stable) C API of Python 3.11 and the
 * buffer protocol, so it builds against Debian's python3-dev without numpy headers.
 *
 *   populate(offsets, skips, turns, m, out) -> None
 *
 * offsets, skips, turns: 1-D C-contiguous buffers of n signed 64-bit integers (numpy int64,
 * array('q')); out: a writable 1-D C-contiguous buffer of m signed 64-bit integers. m must be
 * a prime (the table sizes are), 0 <= offsets < m, 1 <= skips < m and turns >= 0, so that
 * every permutation visits every slot and the loop ends. out[s] receives the index of the
 * destination owning slot s, or -1 everywhere when no destination has turns.
 *
 * The inputs are copied and checked while the GIL is held; the loop itself runs without it
 * and writes out[] only at indices below m, so a concurrent writer of the buffers can spoil
 * the result but not memory.
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Largest table accepted: the kernel's largest is 131071 (CONFIG_IP_VS_MH_TAB_INDEX=17); this
 * bound only keeps slot arithmetic inside uint32_t (c + skip < 2 * m). */
#define MAX_SLOTS 0x7fffffffL

struct mh_dest {
	uint32_t perm; /* next position of the permutation to probe: a slot number */
	uint32_t skip;
	int64_t turns;
	Py_ssize_t index; /* the destination's index in the caller's list */
};

/* Signed 64-bit native integers: numpy reports int64 as "l" (or "q" where long is 32 bits),
 * array('q') as "q". Byte-order prefixes other than native ones are refused. */
static int is_int64_format(const char *format, Py_ssize_t itemsize)
{
	if (itemsize != 8)
		return 0;
	if (format == NULL)
		return 0; /* we asked for PyBUF_FORMAT: NULL would mean unsigned bytes */
	if (format[0] == '@' || format[0] == '=')
		format++;
#if PY_LITTLE_ENDIAN
	else if (format[0] == '<')
		format++;
#else
	else if (format[0] == '>' || format[0] == '!')
		format++;
#endif
	return (format[0] == 'q' || format[0] == 'l') && format[1] == '\0';
}

/* Get a 1-D C-contiguous int64 buffer; on failure raise and leave view released. */
static int get_int64_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name)
{
	int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);

	if (PyObject_GetBuffer(obj, view, flags) < 0) {
		PyErr_Format(PyExc_TypeError,
			     "%s must be a %sC-contiguous buffer of int64 (numpy int64, array('q'))",
			     name, writable ? "writable " : "");
		return -1;
	}
	if (view->ndim != 1 || !is_int64_format(view->format, view->itemsize) ||
	    view->len % 8 != 0) {
		PyErr_Format(PyExc_TypeError, "%s must be a one-dimensional buffer of int64, "
			     "not format %s with %d dimension(s)", name,
			     view->format ? view->format : "B", view->ndim);
		PyBuffer_Release(view);
		return -1;
	}
	return 0;
}

static int is_prime(long m)
{
	if (m < 2)
		return 0;
	if (m % 2 == 0)
		return m == 2;
	for (long p = 3; p <= m / p; p += 2)
		if (m % p == 0)
			return 0;
	return 1;
}

/* ip_vs_mh_populate: round after round, each destination with turns claims that many slots,
 * each time the next free slot along its permutation, until every slot is taken. A bitmap of
 * taken slots (16 KiB for the largest table) keeps the probing in L1 cache. */
static void populate_loop(struct mh_dest *d, Py_ssize_t n, uint32_t m, int64_t *out,
			  uint64_t *used)
{
	uint32_t filled = 0;

	for (;;) {
		for (Py_ssize_t i = 0; i < n; i++) {
			uint32_t c = d[i].perm;
			const uint32_t skip = d[i].skip;

			for (int64_t t = d[i].turns; t > 0; t--) {
				while (used[c >> 6] >> (c & 63) & 1) {
					c += skip;
					if (c >= m)
						c -= m;
				}
				used[c >> 6] |= (uint64_t)1 << (c & 63);
				out[c] = (int64_t)d[i].index;
				if (++filled == m)
					return;
			}
			d[i].perm = c;
		}
	}
}

static PyObject *mh_populate(PyObject *self, PyObject *args)
{
	PyObject *o_offsets, *o_skips, *o_turns, *o_out;
	long m_arg;
	Py_buffer b_offsets, b_skips, b_turns, b_out;
	struct mh_dest *d = NULL;
	uint64_t *used = NULL;
	Py_ssize_t n, n_active = 0, i;
	uint32_t m;
	int64_t *out;
	PyObject *result = NULL;

	(void)self;
	if (!PyArg_ParseTuple(args, "OOOlO:populate", &o_offsets, &o_skips, &o_turns, &m_arg,
			      &o_out))
		return NULL;
	if (m_arg < 2 || m_arg > MAX_SLOTS || !is_prime(m_arg)) {
		PyErr_Format(PyExc_ValueError, "m must be a prime within 2..%ld, not %ld",
			     (long)MAX_SLOTS, m_arg);
		return NULL;
	}
	m = (uint32_t)m_arg;

	if (get_int64_buffer(o_offsets, &b_offsets, 0, "offsets") < 0)
		return NULL;
	if (get_int64_buffer(o_skips, &b_skips, 0, "skips") < 0)
		goto release_offsets;
	if (get_int64_buffer(o_turns, &b_turns, 0, "turns") < 0)
		goto release_skips;
	if (get_int64_buffer(o_out, &b_out, 1, "out") < 0)
		goto release_turns;

	n = b_offsets.len / 8;
	if (b_skips.len / 8 != n || b_turns.len / 8 != n) {
		PyErr_Format(PyExc_ValueError,
			     "offsets, skips and turns differ in length (%zd, %zd, %zd)", n,
			     b_skips.len / 8, b_turns.len / 8);
		goto release_out;
	}
	if (b_out.len / 8 != (Py_ssize_t)m) {
		PyErr_Format(PyExc_ValueError, "out holds %zd items, not m = %ld", b_out.len / 8,
			     m_arg);
		goto release_out;
	}

	/* Copy and check the destinations; those without turns take no part in the loop. */
	d = PyMem_Malloc(sizeof(*d) * (size_t)(n > 0 ? n : 1));
	used = PyMem_Calloc(((size_t)m + 63) / 64, sizeof(*used));
	if (d == NULL || used == NULL) {
		PyErr_NoMemory();
		goto free_work;
	}
	{
		const int64_t *offsets = b_offsets.buf, *skips = b_skips.buf, *turns = b_turns.buf;

		for (i = 0; i < n; i++) {
			int64_t off = offsets[i], skip = skips[i], t = turns[i];

			if (off < 0 || off >= (int64_t)m) {
				PyErr_Format(PyExc_ValueError,
					     "offsets[%zd] = %lld is outside 0..%ld", i,
					     (long long)off, m_arg - 1);
				goto free_work;
			}
			if (skip < 1 || skip >= (int64_t)m) {
				PyErr_Format(PyExc_ValueError,
					     "skips[%zd] = %lld is outside 1..%ld", i,
					     (long long)skip, m_arg - 1);
				goto free_work;
			}
			if (t < 0) {
				PyErr_Format(PyExc_ValueError, "turns[%zd] = %lld is negative", i,
					     (long long)t);
				goto free_work;
			}
			if (t > 0) {
				d[n_active].perm = (uint32_t)off;
				d[n_active].skip = (uint32_t)skip;
				d[n_active].turns = t;
				d[n_active].index = i;
				n_active++;
			}
		}
	}

	out = b_out.buf;
	Py_BEGIN_ALLOW_THREADS
	for (uint32_t s = 0; s < m; s++)
		out[s] = -1;
	if (n_active > 0)
		populate_loop(d, n_active, m, out, used);
	Py_END_ALLOW_THREADS

	Py_INCREF(Py_None);
	result = Py_None;
free_work:
	PyMem_Free(used);
	PyMem_Free(d);
release_out:
	PyBuffer_Release(&b_out);
release_turns:
	PyBuffer_Release(&b_turns);
release_skips:
	PyBuffer_Release(&b_skips);
release_offsets:
	PyBuffer_Release(&b_offsets);
	return result;
}

static PyMethodDef mh_methods[] = {
	{"populate", mh_populate, METH_VARARGS,
	 "populate(offsets, skips, turns, m, out) -> None\n\n"
	 "ip_vs_mh_populate: fill out (m int64 slots) with the index of the destination owning\n"
	 "each slot, -1 everywhere when no destination has turns. offsets, skips and turns are\n"
	 "int64 buffers of one entry per destination, in list order; m must be a prime,\n"
	 "0 <= offsets < m, 1 <= skips < m, turns >= 0."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef mh_module = {
	PyModuleDef_HEAD_INIT,
	"mhd.maglev._fast",
	"Compiled population loop of the ip_vs_mh lookup table, for mhd.maglev.table (optional).",
	0,
	mh_methods,
	NULL,
	NULL,
	NULL,
	NULL,
};

PyMODINIT_FUNC PyInit__fast(void)
{
	return PyModuleDef_Init(&mh_module);
}
