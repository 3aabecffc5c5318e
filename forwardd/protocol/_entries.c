/* forwardd.protocol._entries: frame, count, check and cut PackedForward entries in one pass over the bytes.
 *
 * Why C: the edge must know, for every chunk it accepts, how many entries it holds, where the last whole
 * one ends, and which entries forwardd.model.decode_entries will drop (so that the drop is counted and
 * logged where the peer is known, not silently later). A Python loop of Unpacker.skip() calls costs about
 * 130 ns per entry for the count alone; this does the count and the checks in about 20, without building
 * a Python object per entry, and without the GIL for big payloads (it runs in a worker thread then).
 *
 * The rules are those of decode_entries (and of msgpack's Unpacker, which it uses), kept equal by
 * tests/protocol/test_entries.py against the pure-Python reference in forwardd/protocol/entries.py:
 *   - framing: a value frames like Unpacker.skip() frames it; byte 0xc1 or a container opened inside
 *     1024 open ones (msgpack's StackError) is malformed, bytes that end inside a value are a truncated
 *     tail; either ends the scan (the tail is "broken");
 *   - an entry that frames is invalid when it cannot be built (an array or a map used as a map key, a
 *     msgpack Timestamp, ext -1, of a bad length or with nanoseconds over 999999999, an ext32 whose length
 *     is 2^32-1), when it is not a
 *     2-array, when its record is not a map, or when its time has no known shape (see model._time_ns) or
 *     lies outside the epoch .. 9999-12-31T23:59:59.999999999Z (see model.entry_problem).
 * The input is untrusted: every read is bounds checked and nothing is allocated from a length header.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define STACK_LIMIT 1024
#define MAX_SECONDS 253402300799ULL       /* forwardd.constants.MAX_SECONDS: 9999-12-31T23:59:59Z */
#define FLOAT_TIME_END 253402300800.0     /* float seconds from here on are past it (model._FLOAT_TIME_END) */
#define NOGIL_FROM (64 * 1024) /* scans of more bytes than this release the GIL */

enum { OK = 0, TRUNCATED = 1, MALFORMED = 2, TOO_DEEP = 3 }; /* TOO_DEEP is malformed too */
enum { R_NONE = 0, R_NOT_PAIR, R_RECORD_NOT_MAP, R_BAD_TIME, R_UNHASHABLE_KEY, R_BAD_EXT };

static inline uint64_t be(const uint8_t *p, int n) {
    uint64_t x = 0;
    for (int i = 0; i < n; i++) {
        x = (x << 8) | p[i];
    }
    return x;
}

/* Whether msgpack builds a Timestamp from an ext -1 payload of n bytes at d (Timestamp.from_bytes and the
 * nanoseconds check of its constructor). */
static int timestamp_ok(const uint8_t *d, uint64_t n) {
    if (n == 4) {
        return 1;
    }
    if (n == 8) {
        return (be(d, 8) >> 34) <= 999999999ULL;
    }
    if (n == 12) {
        return be(d, 4) <= 999999999ULL;
    }
    return 0;
}

/* Skips the value at *pp. depth: containers open around it. *bad keeps the first reason the value cannot
 * be built, in the order msgpack builds it: a container used as a map key fails when its pair is stored,
 * after the value. *container says whether the value was an array or a map. */
static int skip(const uint8_t **pp, const uint8_t *end, int depth, int *container, int *bad) {
    const uint8_t *p = *pp;
    if (p >= end) {
        return TRUNCATED;
    }
    uint8_t b = *p++;
    uint64_t n = 0;
    int hdr = 0;
    int is_map = 0;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
        *pp = p;
        return OK;
    }
    if ((b & 0xe0) == 0xa0) {
        n = b & 0x1f;
        goto data;
    }
    if ((b & 0xf0) == 0x90) {
        n = b & 0x0f;
        goto container;
    }
    if ((b & 0xf0) == 0x80) {
        n = b & 0x0f;
        is_map = 1;
        goto container;
    }
    switch (b) {
    case 0xc4:
    case 0xd9:
        hdr = 1;
        goto data_len;
    case 0xc5:
    case 0xda:
        hdr = 2;
        goto data_len;
    case 0xc6:
    case 0xdb:
        hdr = 4;
        goto data_len;
    case 0xca:
    case 0xce:
    case 0xd2:
        n = 4;
        goto data;
    case 0xcb:
    case 0xcf:
    case 0xd3:
        n = 8;
        goto data;
    case 0xcc:
    case 0xd0:
        n = 1;
        goto data;
    case 0xcd:
    case 0xd1:
        n = 2;
        goto data;
    case 0xd4:
        n = 1;
        goto ext;
    case 0xd5:
        n = 2;
        goto ext;
    case 0xd6:
        n = 4;
        goto ext;
    case 0xd7:
        n = 8;
        goto ext;
    case 0xd8:
        n = 16;
        goto ext;
    case 0xc7:
        hdr = 1;
        goto ext_len;
    case 0xc8:
        hdr = 2;
        goto ext_len;
    case 0xc9:
        hdr = 4;
        goto ext_len;
    case 0xdc:
        hdr = 2;
        goto container_len;
    case 0xdd:
        hdr = 4;
        goto container_len;
    case 0xde:
        hdr = 2;
        is_map = 1;
        goto container_len;
    case 0xdf:
        hdr = 4;
        is_map = 1;
        goto container_len;
    default: /* 0xc1: never used */
        return MALFORMED;
    }

data_len:
    if (end - p < hdr) {
        return TRUNCATED;
    }
    n = be(p, hdr);
    p += hdr;
data:
    if ((uint64_t)(end - p) < n) {
        return TRUNCATED;
    }
    *pp = p + n;
    return OK;

ext_len:
    if (end - p < hdr) {
        return TRUNCATED;
    }
    n = be(p, hdr);
    p += hdr;
    if (hdr == 4 && n == 0xffffffffULL) {
        /* msgpack adds the type byte to the 32-bit length, which wraps to 0: it frames the header alone as
         * a whole value, and cannot build it (ValueError). Framed the same here, so that both agree. */
        if (*bad == R_NONE) {
            *bad = R_BAD_EXT;
        }
        *pp = p;
        return OK;
    }
ext:
    if ((uint64_t)(end - p) < n + 1) {
        return TRUNCATED;
    }
    if ((int8_t)p[0] == -1 && !timestamp_ok(p + 1, n) && *bad == R_NONE) {
        *bad = R_BAD_EXT;
    }
    *pp = p + 1 + n;
    return OK;

container_len:
    if (end - p < hdr) {
        return TRUNCATED;
    }
    n = be(p, hdr);
    p += hdr;
container:
    if (depth >= STACK_LIMIT) {
        return TOO_DEEP; /* msgpack checks the depth before it looks at the size */
    }
    for (uint64_t i = 0; i < n; i++) {
        int key_container = 0, unused = 0, rc;
        if (p < end) { /* the common leaves, without a call */
            uint8_t c = *p;
            if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
                p++;
                goto value;
            }
            if ((c & 0xe0) == 0xa0 && end - p > (c & 0x1f)) {
                p += 1 + (c & 0x1f);
                goto value;
            }
            if (c == 0xd9 && end - p > 1 && end - p - 2 >= p[1]) {
                p += 2 + p[1];
                goto value;
            }
            if (c == 0xd7 && end - p >= 10 && p[1] != 0xff) { /* fixext8 (an EventTime, say), no Timestamp */
                p += 10;
                goto value;
            }
        }
        rc = skip(&p, end, depth + 1, &key_container, bad);
        if (rc != OK) {
            return rc;
        }
    value:
        if (!is_map) {
            continue;
        }
        if (p < end) {
            uint8_t c = *p;
            if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
                p++;
                goto pair;
            }
            if ((c & 0xe0) == 0xa0 && end - p > (c & 0x1f)) {
                p += 1 + (c & 0x1f);
                goto pair;
            }
            if (c == 0xd9 && end - p > 1 && end - p - 2 >= p[1]) {
                p += 2 + p[1];
                goto pair;
            }
            if (c == 0xda && end - p > 2 && (uint64_t)(end - p - 3) >= be(p + 1, 2)) {
                p += 3 + be(p + 1, 2);
                goto pair;
            }
        }
        rc = skip(&p, end, depth + 1, &unused, bad);
        if (rc != OK) {
            return rc;
        }
    pair:
        if (key_container && *bad == R_NONE) {
            *bad = R_UNHASHABLE_KEY;
        }
    }
    *container = 1;
    *pp = p;
    return OK;
}

/* Size of the array header at p (and its length in *n), or 0 if p is not an array. */
static int array_header(const uint8_t *p, uint64_t *n) {
    if ((p[0] & 0xf0) == 0x90) {
        *n = p[0] & 0x0f;
        return 1;
    }
    if (p[0] == 0xdc) {
        *n = be(p + 1, 2);
        return 3;
    }
    if (p[0] == 0xdd) {
        *n = be(p + 1, 4);
        return 5;
    }
    return 0;
}

static inline int is_map_byte(uint8_t b) {
    return (b & 0xf0) == 0x80 || b == 0xde || b == 0xdf;
}

/* Whether the value at p is a time model._time_ns accepts, within the range model.entry_problem holds
 * it to (the value is known to frame). */
static int time_ok(const uint8_t *p) {
    uint8_t b = p[0];
    if (b <= 0x7f || b == 0xc0 || (b >= 0xcc && b <= 0xce)) {
        return 1; /* zero or positive integer seconds below 2^32, or nil */
    }
    if (b == 0xcf || b == 0xd3) {
        return be(p + 1, 8) <= MAX_SECONDS; /* 64 bits: a negative int64 is huge as unsigned */
    }
    if (b >= 0xe0) {
        return 0; /* negative */
    }
    if (b >= 0xd0 && b <= 0xd2) {
        return (p[1] & 0x80) == 0; /* a signed integer: its sign bit */
    }
    if (b == 0xca || b == 0xcb) {
        double t;
        if (b == 0xca) {
            uint32_t bits = (uint32_t)be(p + 1, 4);
            float f;
            memcpy(&f, &bits, 4);
            t = (double)f;
        } else {
            uint64_t bits = be(p + 1, 8);
            memcpy(&t, &bits, 8);
        }
        return !(isnan(t) || t < 0 || t >= FLOAT_TIME_END); /* infinities too */
    }
    /* ext: only an EventTime (code 0, 8 bytes) is a time */
    if (b == 0xd7) {
        return p[1] == 0;
    }
    if (b == 0xc7) {
        return p[1] == 8 && p[2] == 0;
    }
    if (b == 0xc8) {
        return be(p + 1, 2) == 8 && p[3] == 0;
    }
    if (b == 0xc9) {
        return be(p + 1, 4) == 8 && p[5] == 0;
    }
    return 0;
}

/* Why decode_entries drops the entry [p, end) that frames, or R_NONE; bad: what skipping it found. */
static int check_entry(const uint8_t *p, const uint8_t *end, int bad) {
    int unused = 0;
    if (bad != R_NONE) {
        return bad;
    }
    uint64_t n;
    int h = array_header(p, &n);
    if (h == 0 || n != 2) {
        return R_NOT_PAIR;
    }
    const uint8_t *t = p + h;
    const uint8_t *r = t;
    skip(&r, end, 1, &unused, &bad);
    if (!is_map_byte(r[0])) {
        return R_RECORD_NOT_MAP;
    }
    h = array_header(t, &n);
    if (h != 0) { /* v1.5 wrapped time: [time, {metadata}, ...] */
        if (n == 0) {
            return R_BAD_TIME;
        }
        const uint8_t *inner = t + h;
        if (n > 1) {
            const uint8_t *meta = inner;
            skip(&meta, end, 2, &unused, &bad);
            if (!is_map_byte(meta[0])) {
                return R_BAD_TIME;
            }
        }
        t = inner;
        uint64_t unused;
        if (array_header(t, &unused) != 0) {
            return R_BAD_TIME;
        }
    }
    return time_ok(t) ? R_NONE : R_BAD_TIME;
}

/* A run of consecutive valid entries [a, b) of slice number `slice`. */
typedef struct {
    Py_ssize_t slice, a, b;
} Run;

typedef struct {
    /* in */
    const uint8_t *base;
    Py_ssize_t start, end, max_entries, slice_bytes, slice_entries;
    /* out */
    Py_ssize_t count, good_end, invalid, bad_times, bad_start, bad_end;
    int broken, reason;
    Run *runs; /* the valid entries, slice by slice */
    Py_ssize_t nruns, runs_cap;
    Py_ssize_t *counts; /* valid entries per slice */
    Py_ssize_t nslices, counts_cap;
    int nomem;
} Scan;

static void *grow(void *items, Py_ssize_t *cap, size_t size, int *nomem) {
    Py_ssize_t n = *cap ? *cap * 2 : 8;
    void *grown = realloc(items, (size_t)n * size);
    if (grown == NULL) {
        *nomem = 1;
        return items;
    }
    *cap = n;
    return grown;
}

static void add_run(Scan *s, Py_ssize_t slice, Py_ssize_t a, Py_ssize_t b) {
    if (s->nruns == s->runs_cap) {
        s->runs = (Run *)grow(s->runs, &s->runs_cap, sizeof(Run), &s->nomem);
        if (s->nruns == s->runs_cap) {
            return;
        }
    }
    s->runs[s->nruns].slice = slice;
    s->runs[s->nruns].a = a;
    s->runs[s->nruns].b = b;
    s->nruns++;
}

static void add_count(Scan *s, Py_ssize_t n) {
    if (s->nslices == s->counts_cap) {
        s->counts = (Py_ssize_t *)grow(s->counts, &s->counts_cap, sizeof(Py_ssize_t), &s->nomem);
        if (s->nslices == s->counts_cap) {
            return;
        }
    }
    s->counts[s->nslices++] = n;
}

/* The scan proper (no Python object touched: it may run without the GIL). When cutting, the valid entries
 * are grouped into slices of at most slice_bytes bytes (a single bigger entry is a slice of its own) and
 * slice_entries entries, each slice a list of runs of consecutive valid entries. */
static void run(Scan *s) {
    const uint8_t *p = s->base + s->start;
    const uint8_t *end = s->base + s->end;
    int cut = s->slice_bytes > 0 || s->slice_entries > 0;
    Py_ssize_t in_slice = 0, slice_used = 0, run_a = -1, run_b = -1;
    s->good_end = s->start;
    while (p < end && (s->max_entries < 0 || s->count < s->max_entries)) {
        const uint8_t *q = p;
        int bad = R_NONE, container = 0;
        int rc = skip(&q, end, 0, &container, &bad);
        if (rc != OK) {
            s->broken = 1;
            break;
        }
        Py_ssize_t a = p - s->base, b = q - s->base;
        s->count++;
        s->good_end = b;
        p = q;
        int why = check_entry(s->base + a, q, bad);
        if (why != R_NONE) {
            s->invalid++;
            if (why == R_BAD_TIME) {
                s->bad_times++;
            }
            if (s->reason == R_NONE) {
                s->reason = why;
                s->bad_start = a;
                s->bad_end = b;
            }
            if (cut && run_a >= 0) {
                add_run(s, s->nslices, run_a, run_b);
                run_a = -1;
            }
            continue;
        }
        if (!cut) {
            continue;
        }
        if (in_slice > 0 && ((s->slice_bytes > 0 && slice_used + (b - a) > s->slice_bytes) ||
                             (s->slice_entries > 0 && in_slice >= s->slice_entries))) {
            if (run_a >= 0) {
                add_run(s, s->nslices, run_a, run_b);
                run_a = -1;
            }
            add_count(s, in_slice);
            in_slice = slice_used = 0;
        }
        if (run_a < 0) {
            run_a = a;
        }
        run_b = b;
        in_slice++;
        slice_used += b - a;
    }
    if (cut && run_a >= 0) {
        add_run(s, s->nslices, run_a, run_b);
    }
    if (cut && in_slice > 0) {
        add_count(s, in_slice);
    }
}

/* [(count, a1, b1, a2, b2, ...), ...]: each slice's valid entries and the runs that hold them. */
static PyObject *slices_list(Scan *s) {
    PyObject *slices = PyList_New(s->nslices);
    if (slices == NULL) {
        return NULL;
    }
    Py_ssize_t r = 0;
    for (Py_ssize_t i = 0; i < s->nslices; i++) {
        Py_ssize_t first = r;
        while (r < s->nruns && s->runs[r].slice == i) {
            r++;
        }
        PyObject *item = PyTuple_New(1 + 2 * (r - first));
        if (item == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(slices, i, item); /* items not yet set are NULL: freed fine on failure */
        PyObject *v = PyLong_FromSsize_t(s->counts[i]);
        if (v == NULL) {
            goto fail;
        }
        PyTuple_SET_ITEM(item, 0, v);
        for (Py_ssize_t k = first; k < r; k++) {
            PyObject *a = PyLong_FromSsize_t(s->runs[k].a);
            if (a == NULL) {
                goto fail;
            }
            PyTuple_SET_ITEM(item, 1 + 2 * (k - first), a);
            PyObject *b = PyLong_FromSsize_t(s->runs[k].b);
            if (b == NULL) {
                goto fail;
            }
            PyTuple_SET_ITEM(item, 2 + 2 * (k - first), b);
        }
    }
    return slices;
fail:
    Py_DECREF(slices);
    return NULL;
}

static const char *const PARAMS[] = {"data", "start", "end", "max_entries", "slice_bytes", "slice_entries"};
#define NPARAMS 6

/* Vectorcall arguments (positional or by name) into args[NPARAMS]; -1 and an exception when wrong. */
static int parse(PyObject *const *argv, Py_ssize_t nargs, PyObject *kwnames, PyObject **args) {
    for (int i = 0; i < NPARAMS; i++) {
        args[i] = NULL;
    }
    if (nargs > NPARAMS) {
        PyErr_SetString(PyExc_TypeError, "scan_entries takes at most 6 arguments");
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        args[i] = argv[i];
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        const char *name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, k));
        int found = -1;
        for (int i = 0; name != NULL && i < NPARAMS; i++) {
            if (strcmp(name, PARAMS[i]) == 0) {
                found = i;
            }
        }
        if (found < 0 || args[found] != NULL) {
            PyErr_Format(PyExc_TypeError, "scan_entries: unexpected or repeated argument %R",
                         PyTuple_GET_ITEM(kwnames, k));
            return -1;
        }
        args[found] = argv[nargs + k];
    }
    if (args[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "scan_entries: data is required");
        return -1;
    }
    return 0;
}

static PyObject *scan_entries(PyObject *self, PyObject *const *argv, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *args[NPARAMS];
    Py_ssize_t num[NPARAMS] = {0, 0, -1, -1, 0, 0};
    if (parse(argv, nargs, kwnames, args) < 0) {
        return NULL;
    }
    for (int i = 1; i < NPARAMS; i++) {
        if (args[i] != NULL) {
            num[i] = PyLong_AsSsize_t(args[i]);
            if (num[i] == -1 && PyErr_Occurred()) {
                return NULL;
            }
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Py_ssize_t start = num[1], end = num[2];
    if (end < 0 || end > view.len) {
        end = view.len;
    }
    if (start < 0 || start > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    Scan s;
    memset(&s, 0, sizeof(s));
    s.base = (const uint8_t *)view.buf;
    s.start = start;
    s.end = end;
    s.max_entries = num[3];
    s.slice_bytes = num[4];
    s.slice_entries = num[5];
    s.bad_start = s.bad_end = -1;
    if (end - start >= NOGIL_FROM) {
        Py_BEGIN_ALLOW_THREADS run(&s);
        Py_END_ALLOW_THREADS
    } else {
        run(&s);
    }
    PyBuffer_Release(&view);
    PyObject *slices = NULL;
    if (s.nomem) {
        free(s.runs);
        free(s.counts);
        return PyErr_NoMemory();
    }
    if (s.slice_bytes > 0 || s.slice_entries > 0) {
        slices = slices_list(&s);
    } else {
        slices = Py_NewRef(Py_None);
    }
    free(s.runs);
    free(s.counts);
    if (slices == NULL) {
        return NULL;
    }
    PyObject *out = PyTuple_New(9);
    if (out == NULL) {
        Py_DECREF(slices);
        return NULL;
    }
    Py_ssize_t ints[] = {s.count, s.good_end, 0, s.invalid, s.bad_times, s.bad_start, s.bad_end, s.reason};
    for (int i = 0; i < 8; i++) {
        PyObject *v = i == 2 ? Py_NewRef(s.broken ? Py_True : Py_False) : PyLong_FromSsize_t(ints[i]);
        if (v == NULL) {
            Py_DECREF(out);
            Py_DECREF(slices);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, v);
    }
    PyTuple_SET_ITEM(out, 8, slices);
    return out;
}

/* frame_ends(data, start, shift): the end offsets (plus shift) of the whole values from start on, and how
 * the bytes after the last of them end: 0 (there are none), 1 (cut short: a value not yet whole), 2
 * (malformed: byte 0xc1) or 3 (malformed: nested deeper than msgpack's Unpacker goes). The framer's one
 * call per read, where a Python loop of Unpacker.skip() calls cost about 60 ns per frame. */
static PyObject *frame_ends(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "frame_ends(data, start, shift)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t shift = PyLong_AsSsize_t(args[2]);
    if (shift == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (start < 0 || start > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    PyObject *ends = PyList_New(0);
    const uint8_t *base = (const uint8_t *)view.buf;
    const uint8_t *p = base + start, *end = base + view.len;
    int tail = 0;
    while (ends != NULL && p < end) {
        int bad = R_NONE, container = 0;
        int rc = skip(&p, end, 0, &container, &bad);
        if (rc != OK) {
            tail = rc;
            break;
        }
        PyObject *v = PyLong_FromSsize_t(shift + (p - base));
        if (v == NULL || PyList_Append(ends, v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(ends);
            break;
        }
        Py_DECREF(v);
    }
    PyBuffer_Release(&view);
    if (ends == NULL) {
        return NULL;
    }
    return Py_BuildValue("(Ni)", ends, tail);
}

/* message_run(data, start, ends, first, shift, cont_tag, cont_room, group_max): the Message-mode hot loop
 * of forwardd/protocol/messages.py (_read_small_frames) over whole frames, in one call per read instead of a
 * dozen Python steps per request. From frame `first` (it begins at index `start` of data; ends[i] - shift is
 * where frame i ends) it takes every request the Python loop takes on its hot path: an array of 3 or 4, a
 * str tag, a time of kind int, ext, float or nil, a map record, and with 4 elements an option element that is
 * {} or nil or {"chunk": ...} alone. It stops at the first frame that is anything else (a heartbeat, another
 * mode, other options, a violation), which the Python loop then reads; so the result is the Python loop's.
 *
 * Consecutive requests with the same tag bytes are grouped as that loop groups them (up to group_max per
 * group). The group the Python loop has open (tag bytes cont_tag, room for cont_room more; cont_tag None
 * when there is none) is continued when the first request taken has its tag.
 *
 * Returns (groups, next, continued): groups is a list of (tag bytes, entries, requests, acks, acked, size)
 * with entries the requests' [time, record] entries back to back and acks their {"ack": chunk} replies back
 * to back (b"" when none asked); next is the index of the first frame not taken; continued says whether
 * groups[0] belongs to the open group. The frames are known to be whole (framed by frame_ends), so every
 * value in them frames; reads are bounds checked all the same. */
typedef struct {
    Py_ssize_t tag, tag_len, entry, entry_end, ack, ack_end, size;
} Req;

static int str_header(const uint8_t *p, const uint8_t *end, Py_ssize_t *len) {
    uint8_t b = p[0];
    int hdr;
    uint64_t n;
    if ((b & 0xe0) == 0xa0) {
        hdr = 1;
        n = b & 0x1f;
    } else if (b == 0xd9 || b == 0xda || b == 0xdb) {
        int w = b == 0xd9 ? 1 : (b == 0xda ? 2 : 4);
        if (end - p < 1 + w) {
            return 0;
        }
        hdr = 1 + w;
        n = be(p + 1, w);
    } else {
        return 0;
    }
    if ((uint64_t)(end - p - hdr) < n) {
        return 0;
    }
    *len = (Py_ssize_t)n;
    return hdr;
}

static inline int is_time_byte(uint8_t b) {
    /* kinds INT, EXT, FLOAT and NIL of forwardd/protocol/wire.py */
    return b <= 0x7f || b >= 0xe0 || (b >= 0xcc && b <= 0xd3) || (b >= 0xc7 && b <= 0xc9) ||
           (b >= 0xd4 && b <= 0xd8) || b == 0xca || b == 0xcb || b == 0xc0;
}

/* Reads the request in [s, e): 1 and *r filled when it is on the hot path, else 0. */
static int hot_request(const uint8_t *base, Py_ssize_t s, Py_ssize_t e, Req *r) {
    const uint8_t *p = base + s, *end = base + e;
    uint64_t n;
    int hdr = array_header(p, &n);
    if (hdr == 0 || (n != 3 && n != 4) || end - p <= hdr) {
        return 0;
    }
    p += hdr;
    Py_ssize_t tag_len;
    int sh = str_header(p, end, &tag_len);
    if (sh == 0) {
        return 0;
    }
    r->tag = (p + sh) - base;
    r->tag_len = tag_len;
    p += sh + tag_len;
    if (p >= end || !is_time_byte(*p)) {
        return 0;
    }
    r->entry = p - base;
    int container = 0, bad = R_NONE;
    if (skip(&p, end, 1, &container, &bad) != OK || p >= end || !is_map_byte(*p)) {
        return 0;
    }
    if (skip(&p, end, 1, &container, &bad) != OK) {
        return 0;
    }
    r->entry_end = p - base;
    r->ack = r->ack_end = 0;
    if (n == 4) {
        if (p >= end) {
            return 0;
        }
        uint8_t ob = *p;
        if (ob == 0x80 || ob == 0xc0) {
            p++;
        } else if (ob == 0x81 && end - p > 7 && memcmp(p + 1, "\xa5" "chunk", 6) == 0) {
            r->ack = (p + 7) - base;
            r->ack_end = e;
            p = end;
        } else {
            return 0;
        }
    }
    if (p != end) {
        return 0; /* cannot happen for a whole frame; kept so that nothing is read twice or skipped */
    }
    r->size = e - s;
    return 1;
}

#define ACK_HEAD "\x81\xa3" "ack"
#define ACK_HEAD_LEN 5

/* The (tag, entries, requests, acks, acked, size) tuple of reqs[0..n). */
static PyObject *group_tuple(const uint8_t *base, const Req *reqs, Py_ssize_t n) {
    Py_ssize_t elen = 0, alen = 0, acked = 0, size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        elen += 1 + reqs[i].entry_end - reqs[i].entry;
        if (reqs[i].ack_end > reqs[i].ack) {
            alen += ACK_HEAD_LEN + reqs[i].ack_end - reqs[i].ack;
            acked++;
        }
        size += reqs[i].size;
    }
    PyObject *entries = PyBytes_FromStringAndSize(NULL, elen);
    PyObject *acks = PyBytes_FromStringAndSize(NULL, alen);
    PyObject *tag = PyBytes_FromStringAndSize((const char *)base + reqs[0].tag, reqs[0].tag_len);
    if (entries == NULL || acks == NULL || tag == NULL) {
        Py_XDECREF(entries);
        Py_XDECREF(acks);
        Py_XDECREF(tag);
        return NULL;
    }
    char *eo = PyBytes_AS_STRING(entries), *ao = PyBytes_AS_STRING(acks);
    for (Py_ssize_t i = 0; i < n; i++) {
        *eo++ = (char)0x92;
        Py_ssize_t k = reqs[i].entry_end - reqs[i].entry;
        memcpy(eo, base + reqs[i].entry, (size_t)k);
        eo += k;
        if (reqs[i].ack_end > reqs[i].ack) {
            memcpy(ao, ACK_HEAD, ACK_HEAD_LEN);
            ao += ACK_HEAD_LEN;
            k = reqs[i].ack_end - reqs[i].ack;
            memcpy(ao, base + reqs[i].ack, (size_t)k);
            ao += k;
        }
    }
    return Py_BuildValue("(NNnNnn)", tag, entries, n, acks, acked, size);
}

static PyObject *message_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "message_run(data, start, ends, first, shift, cont_tag, cont_room, group_max)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t first = PyLong_AsSsize_t(args[3]);
    Py_ssize_t shift = PyLong_AsSsize_t(args[4]);
    Py_ssize_t cont_room = PyLong_AsSsize_t(args[6]);
    Py_ssize_t group_max = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *ends = args[2], *cont_tag = args[5];
    if (!PyList_Check(ends)) {
        PyErr_SetString(PyExc_TypeError, "ends must be a list");
        return NULL;
    }
    if (cont_tag != Py_None && !PyBytes_Check(cont_tag)) {
        PyErr_SetString(PyExc_TypeError, "cont_tag must be bytes or None");
        return NULL;
    }
    if (group_max < 1) {
        group_max = 1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const uint8_t *base = (const uint8_t *)view.buf;
    Py_ssize_t nends = PyList_GET_SIZE(ends);
    PyObject *groups = PyList_New(0);
    Req *reqs = NULL;
    Py_ssize_t nreqs = 0, cap = 0;
    int nomem = 0, continued = 0;
    /* the group being built: reqs[0..nreqs); its tag bytes are those of reqs[0] (or cont_tag) */
    const uint8_t *gtag = NULL;
    Py_ssize_t gtag_len = 0, room = 0;
    int open_cont = 0; /* the group being built is the Python loop's open one */
    if (cont_tag != Py_None && cont_room > 0) {
        gtag = (const uint8_t *)PyBytes_AS_STRING(cont_tag);
        gtag_len = PyBytes_GET_SIZE(cont_tag);
        room = cont_room;
        open_cont = 1;
    }
    if (first < 0 || start < 0 || start > view.len) {
        PyBuffer_Release(&view);
        Py_DECREF(groups);
        PyErr_SetString(PyExc_ValueError, "first or start out of range");
        return NULL;
    }
    Py_ssize_t i = first, s = start;
    for (; groups != NULL && i < nends; i++) {
        Py_ssize_t e = PyLong_AsSsize_t(PyList_GET_ITEM(ends, i));
        if (e == -1 && PyErr_Occurred()) {
            Py_CLEAR(groups);
            break;
        }
        e -= shift;
        if (e <= s || e > view.len) {
            break;
        }
        Req r;
        if (!hot_request(base, s, e, &r)) {
            break;
        }
        int same = gtag != NULL && room > 0 && r.tag_len == gtag_len &&
                   memcmp(base + r.tag, gtag, (size_t)gtag_len) == 0;
        if (!same) {
            if (nreqs > 0) {
                PyObject *g = group_tuple(base, reqs, nreqs);
                if (g == NULL || PyList_Append(groups, g) < 0) {
                    Py_XDECREF(g);
                    Py_CLEAR(groups);
                    break;
                }
                Py_DECREF(g);
                if (open_cont) {
                    continued = 1;
                }
            }
            open_cont = 0;
            nreqs = 0;
            gtag = base + r.tag;
            gtag_len = r.tag_len;
            room = group_max;
        }
        if (nreqs == cap) {
            reqs = (Req *)grow(reqs, &cap, sizeof(Req), &nomem);
            if (nreqs == cap) {
                Py_CLEAR(groups);
                PyErr_NoMemory();
                break;
            }
        }
        reqs[nreqs++] = r;
        room--;
        s = e;
    }
    if (groups != NULL && nreqs > 0) {
        PyObject *g = group_tuple(base, reqs, nreqs);
        if (g == NULL || PyList_Append(groups, g) < 0) {
            Py_XDECREF(g);
            Py_CLEAR(groups);
        } else {
            Py_DECREF(g);
            if (open_cont) {
                continued = 1;
            }
        }
    }
    free(reqs);
    PyBuffer_Release(&view);
    if (groups == NULL) {
        return NULL;
    }
    return Py_BuildValue("(Nni)", groups, i, continued);
}

/* invalid_entries(data): how many of the (whole) entries in data decoding will drop; the hot path's check,
 * which builds no tuple when, as nearly always, the answer is 0. */
static PyObject *invalid_entries(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Scan s;
    memset(&s, 0, sizeof(s));
    s.base = (const uint8_t *)view.buf;
    s.end = view.len;
    s.max_entries = -1;
    if (view.len >= NOGIL_FROM) {
        Py_BEGIN_ALLOW_THREADS run(&s);
        Py_END_ALLOW_THREADS
    } else {
        run(&s);
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(s.invalid);
}

static PyMethodDef methods[] = {
    {"frame_ends", (PyCFunction)(void (*)(void))frame_ends, METH_FASTCALL,
     "frame_ends(data, start, shift) -> (ends, tail)"},
    {"invalid_entries", invalid_entries, METH_O, "invalid_entries(data) -> int"},
    {"message_run", (PyCFunction)(void (*)(void))message_run, METH_FASTCALL,
     "message_run(data, start, ends, first, shift, cont_tag, cont_room, group_max) -> (groups, next, continued)"},
    {"scan_entries", (PyCFunction)(void (*)(void))scan_entries, METH_FASTCALL | METH_KEYWORDS,
     "scan_entries(data, start=0, end=-1, max_entries=-1, slice_bytes=0, slice_entries=0)\n"
     "-> (count, good_end, broken, invalid, bad_times, bad_start, bad_end, reason, slices)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_entries", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__entries(void) {
    return PyModule_Create(&module);
}
