/* forwardd.outputs._jsonl: PackedForward entries -> JSON lines, in one pass over the msgpack bytes.
 *
 * Why C: writing a chunk as JSON lines in Python costs about 2 us per event (msgspec decodes the records
 * into dicts, then encodes them again and the time and tag are spliced in), which bounds the file output
 * at about 200k events/s on one core. This reads the entries as they arrived and writes the same text
 * directly, without building a Python object per event: about 0.1 us per docker-sized event.
 *
 * It handles exactly the "plain" entries of forwardd.model (the msgspec fast path): [time, record] with a
 * time that is an EventTime ext (code 0, 8 bytes, fraction < 1e9), a positive integer, a float, 0 or nil,
 * and a record of str keys and JSON values nested at most six containers deep. For anything else (bin or
 * ext inside a record, non-str keys, invalid UTF-8, duplicate keys, the v1.5 time wrapper, a torn entry)
 * it returns None and the caller takes the Python path, which has the rules for those. Its output equals
 * forwardd.outputs.formats.plain_json_lines byte for byte (tests/outputs/test_jsonl_native.py).
 *
 * The input is untrusted (it comes off the network and back from the disk buffer): every read is bounds
 * checked, nothing is allocated from a length header, and the output grows by doubling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 6    /* containers inside a record, as the msgspec schema of forwardd.model */
#define MAX_KEYS 64    /* keys per map checked for duplicates; a bigger map takes the Python path */
#define NS 1000000000LL
#define MAX_SECONDS 253402300799LL /* 9999-12-31T23:59:59Z: four-digit years only */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Reader;

typedef struct {
    PyObject *bytes; /* the result, grown by doubling, cut to size at the end */
    char *buf;
    Py_ssize_t len;
    Py_ssize_t cap;
    PyThreadState *saved; /* while the GIL is released (a big call): see with_gil / without_gil */
} Out;

/* -1 and a Python exception set: out of memory. 0: fine. 1: not plain (no exception). */
#define NOT_PLAIN 1

/* A big call whose caller asks for it (release_gil) writes with the GIL released, so that a thread of
 * the caller's (the file output's) transcodes while the event loop runs. Everything that touches Python
 * objects or the Python allocator (growing the bytes, an exception, a float's repr) takes it back around
 * itself. */
static inline void with_gil(Out *o) {
    if (o->saved != NULL) {
        PyEval_RestoreThread(o->saved);
    }
}

static inline void without_gil(Out *o) {
    if (o->saved != NULL) {
        o->saved = PyEval_SaveThread();
    }
}

static int no_memory(Out *o) {
    with_gil(o);
    PyErr_NoMemory();
    without_gil(o);
    return -1;
}

static int out_grow(Out *o, Py_ssize_t need) {
    Py_ssize_t cap = o->cap;
    if (need > PY_SSIZE_T_MAX - o->len) {
        return no_memory(o);
    }
    while (cap - o->len < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            cap = o->len + need;
            break;
        }
        cap *= 2;
    }
    with_gil(o);
    int failed = _PyBytes_Resize(&o->bytes, cap) < 0;
    without_gil(o);
    if (failed) {
        return -1;
    }
    o->buf = PyBytes_AS_STRING(o->bytes);
    o->cap = cap;
    return 0;
}

static inline int out_reserve(Out *o, Py_ssize_t need) {
    if (o->cap - o->len >= need) {
        return 0;
    }
    return out_grow(o, need);
}

static inline int out_write(Out *o, const void *data, Py_ssize_t n) {
    if (out_reserve(o, n) < 0) {
        return -1;
    }
    memcpy(o->buf + o->len, data, (size_t)n);
    o->len += n;
    return 0;
}

static inline int out_byte(Out *o, char c) {
    if (out_reserve(o, 1) < 0) {
        return -1;
    }
    o->buf[o->len++] = c;
    return 0;
}

/* ------------------------------------------------------------------------------------------ reading */

static inline int rd_u8(Reader *r, uint8_t *v) {
    if (r->p >= r->end) {
        return NOT_PLAIN;
    }
    *v = *r->p++;
    return 0;
}

static inline int rd_be(Reader *r, int n, uint64_t *v) {
    if (r->end - r->p < n) {
        return NOT_PLAIN;
    }
    uint64_t x = 0;
    for (int i = 0; i < n; i++) {
        x = (x << 8) | r->p[i];
    }
    r->p += n;
    *v = x;
    return 0;
}

/* A str header at r: its length, and r moved past the header. 0 ok, NOT_PLAIN otherwise. */
static inline int rd_str_header(Reader *r, uint8_t b, uint64_t *n) {
    if ((b & 0xE0) == 0xA0) {
        *n = b & 0x1F;
        return 0;
    }
    switch (b) {
    case 0xD9:
        return rd_be(r, 1, n);
    case 0xDA:
        return rd_be(r, 2, n);
    case 0xDB:
        return rd_be(r, 4, n);
    default:
        return NOT_PLAIN;
    }
}

/* The length of a container header b (array or map), or NOT_PLAIN if b is not one of that kind. */
static inline int rd_len(Reader *r, uint8_t b, uint8_t fix_mask, uint8_t fix_tag, uint8_t b16, uint8_t b32,
                         uint64_t *n) {
    if ((b & fix_mask) == fix_tag) {
        *n = b & 0x0F;
        return 0;
    }
    if (b == b16) {
        return rd_be(r, 2, n);
    }
    if (b == b32) {
        return rd_be(r, 4, n);
    }
    return NOT_PLAIN;
}

/* ------------------------------------------------------------------------------------------ writing */

/* Valid UTF-8 as Python's strict decoder sees it (no overlongs, no surrogates, nothing past U+10FFFF);
 * returns the length of the sequence starting at s (at most n bytes), or 0 when it is not valid. */
static inline int utf8_seq(const uint8_t *s, Py_ssize_t n) {
    uint8_t c = s[0];
    if (c < 0xC2) {
        return 0; /* a continuation byte, or an overlong 2-byte lead */
    }
    if (c < 0xE0) {
        return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) {
            return 0;
        }
        if (c == 0xE0 && s[1] < 0xA0) {
            return 0; /* overlong */
        }
        if (c == 0xED && s[1] >= 0xA0) {
            return 0; /* a surrogate */
        }
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) {
            return 0;
        }
        if (c == 0xF0 && s[1] < 0x90) {
            return 0; /* overlong */
        }
        if (c == 0xF4 && s[1] >= 0x90) {
            return 0; /* past U+10FFFF */
        }
        return 4;
    }
    return 0;
}

/* 0: copied as is; 1: needs an escape (quote, backslash, control); 2: a byte of a multi-byte sequence. */
static uint8_t CLASS[256];
static const char HEX[] = "0123456789abcdef";

static void init_class(void) {
    for (int i = 0; i < 256; i++) {
        CLASS[i] = i < 0x20 ? 1 : (i < 0x80 ? 0 : 2);
    }
    CLASS['"'] = 1;
    CLASS['\\'] = 1;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* True when none of the 8 bytes in v is below 0x20, '"', '\\' or above 0x7F: copied as they are. Each
 * test is the exact "has a byte less than" of Bit Twiddling Hacks (a borrow can only mark bytes above a
 * byte that is truly marked), so the OR is exact too. */
static inline int plain8(uint64_t v) {
    uint64_t q = v ^ (ONES * '"');
    uint64_t b = v ^ (ONES * '\\');
    uint64_t hit = (v | ((v - ONES * 0x20) & ~v) | ((q - ONES) & ~q) | ((b - ONES) & ~b)) & HIGHS;
    return hit == 0;
}

/* A JSON string for the n bytes at s, escaped as msgspec and orjson escape (short forms for \b \t \n \f
 * \r, \u00XX for other controls, nothing else); NOT_PLAIN when s is not valid UTF-8. */
static int write_string(Out *o, const uint8_t *s, Py_ssize_t n) {
    /* Worst case 6 output bytes per input byte, plus the quotes. */
    if (n > (PY_SSIZE_T_MAX - 2) / 6) {
        return no_memory(o);
    }
    if (out_reserve(o, 6 * n + 2) < 0) {
        return -1;
    }
    char *w = o->buf + o->len;
    *w++ = '"';
    Py_ssize_t i = 0;
    while (i < n) {
        /* Eight bytes at a time while none needs a look (log lines are mostly plain ASCII). */
        while (n - i >= 8) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (!plain8(v)) {
                break;
            }
            memcpy(w, &v, 8);
            w += 8;
            i += 8;
        }
        Py_ssize_t start = i;
        while (i < n && CLASS[s[i]] == 0) {
            i++;
        }
        if (i > start) {
            memcpy(w, s + start, (size_t)(i - start));
            w += i - start;
        }
        if (i >= n) {
            break;
        }
        uint8_t c = s[i];
        if (CLASS[c] == 2) {
            int k = utf8_seq(s + i, n - i);
            if (k == 0) {
                return NOT_PLAIN;
            }
            memcpy(w, s + i, (size_t)k);
            w += k;
            i += k;
            continue;
        }
        *w++ = '\\';
        switch (c) {
        case '"':
            *w++ = '"';
            break;
        case '\\':
            *w++ = '\\';
            break;
        case '\b':
            *w++ = 'b';
            break;
        case '\t':
            *w++ = 't';
            break;
        case '\n':
            *w++ = 'n';
            break;
        case '\f':
            *w++ = 'f';
            break;
        case '\r':
            *w++ = 'r';
            break;
        default:
            *w++ = 'u';
            *w++ = '0';
            *w++ = '0';
            *w++ = HEX[c >> 4];
            *w++ = HEX[c & 0xF];
        }
        i++;
    }
    *w++ = '"';
    o->len = w - o->buf;
    return 0;
}

static int write_u64(Out *o, uint64_t v) {
    char tmp[24];
    int k = 0;
    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (out_reserve(o, k) < 0) {
        return -1;
    }
    for (int i = k - 1; i >= 0; i--) {
        o->buf[o->len++] = tmp[i];
    }
    return 0;
}

static int write_i64(Out *o, int64_t v) {
    if (v >= 0) {
        return write_u64(o, (uint64_t)v);
    }
    if (out_byte(o, '-') < 0) {
        return -1;
    }
    return write_u64(o, (uint64_t)(-(v + 1)) + 1);
}

/* A float as msgspec writes it: the shortest text that reads back the same (Python's repr), with the
 * exponent as "e16" / "e-7" rather than repr's "e+16" / "e-07", decimal exponent -5 written out in
 * full ("0.00001"), and inf and nan as null. */
static int write_double(Out *o, double d) {
    if (!isfinite(d)) {
        return out_write(o, "null", 4);
    }
    with_gil(o); /* PyOS_double_to_string allocates with PyMem_Malloc: the text is made under the GIL */
    char *text = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL) {
        without_gil(o);
        return -1;
    }
    char buf[64];
    size_t k = 0;
    const char *t = text;
    const char *e = strchr(text, 'e');
    if (e != NULL && strcmp(e, "e-05") == 0) {
        /* msgspec writes decimal exponent -5 in fixed notation where repr switches at -5 already. */
        if (*t == '-') {
            buf[k++] = *t++;
        }
        memcpy(buf + k, "0.0000", 6);
        k += 6;
        for (; t < e && k < sizeof(buf) - 1; t++) {
            if (*t != '.') {
                buf[k++] = *t;
            }
        }
        PyMem_Free(text);
        without_gil(o);
        return out_write(o, buf, (Py_ssize_t)k);
    }
    while (*t && k < sizeof(buf) - 1) {
        char c = *t++;
        buf[k++] = c;
        if (c == 'e') {
            if (*t == '+') {
                t++;
            } else if (*t == '-') {
                buf[k++] = *t++;
            }
            while (*t == '0' && t[1] != '\0') {
                t++;
            }
        }
    }
    PyMem_Free(text);
    without_gil(o);
    return out_write(o, buf, (Py_ssize_t)k);
}

typedef struct {
    const uint8_t *s;
    uint32_t n;
} Key;

static int write_value(Out *o, Reader *r, int room);

/* The body of a map of n pairs at r, as JSON members; `first` says no member was written before (the
 * injected ones count). Keys equal to skip_a/skip_b are left out with their values. */
static int write_members(Out *o, Reader *r, uint64_t n, int room, int first, const Py_buffer *skip_a,
                         const Py_buffer *skip_b) {
    Key keys[MAX_KEYS];
    if (n > MAX_KEYS) {
        return NOT_PLAIN;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint8_t b;
        uint64_t klen;
        int rc;
        if ((rc = rd_u8(r, &b)) || (rc = rd_str_header(r, b, &klen))) {
            return rc;
        }
        if ((uint64_t)(r->end - r->p) < klen) {
            return NOT_PLAIN;
        }
        const uint8_t *k = r->p;
        r->p += klen;
        for (uint64_t j = 0; j < i; j++) {
            if (keys[j].n == klen && memcmp(keys[j].s, k, (size_t)klen) == 0) {
                return NOT_PLAIN; /* a dict would keep one of them: the Python path has that rule */
            }
        }
        keys[i].s = k;
        keys[i].n = (uint32_t)klen;
        int skip = (skip_a && (uint64_t)skip_a->len == klen && memcmp(skip_a->buf, k, (size_t)klen) == 0) ||
                   (skip_b && (uint64_t)skip_b->len == klen && memcmp(skip_b->buf, k, (size_t)klen) == 0);
        if (skip) {
            /* The injected value wins; this one is read (and checked) but not written. */
            Py_ssize_t mark = o->len;
            if ((rc = write_value(o, r, room))) {
                return rc;
            }
            o->len = mark;
            continue;
        }
        if (!first && out_byte(o, ',') < 0) {
            return -1;
        }
        first = 0;
        if ((rc = write_string(o, k, (Py_ssize_t)klen))) {
            return rc;
        }
        if (out_byte(o, ':') < 0) {
            return -1;
        }
        if ((rc = write_value(o, r, room))) {
            return rc;
        }
    }
    return 0;
}

/* One value at r as JSON. `room` is how many more containers may nest here. */
static int write_value(Out *o, Reader *r, int room) {
    uint8_t b;
    uint64_t u, n;
    int rc;
    if ((rc = rd_u8(r, &b))) {
        return rc;
    }
    if (b <= 0x7F) {
        return write_u64(o, b);
    }
    if (b >= 0xE0) {
        return write_i64(o, (int8_t)b);
    }
    if ((b & 0xE0) == 0xA0 || b == 0xD9 || b == 0xDA || b == 0xDB) {
        if ((rc = rd_str_header(r, b, &n))) {
            return rc;
        }
        if ((uint64_t)(r->end - r->p) < n) {
            return NOT_PLAIN;
        }
        const uint8_t *s = r->p;
        r->p += n;
        return write_string(o, s, (Py_ssize_t)n);
    }
    if ((b & 0xF0) == 0x90 || b == 0xDC || b == 0xDD) {
        if (room <= 0 || (rc = rd_len(r, b, 0xF0, 0x90, 0xDC, 0xDD, &n))) {
            return rc ? rc : NOT_PLAIN;
        }
        if (n > (uint64_t)(r->end - r->p)) {
            return NOT_PLAIN; /* every element takes at least one byte */
        }
        if (out_byte(o, '[') < 0) {
            return -1;
        }
        for (uint64_t i = 0; i < n; i++) {
            if (i && out_byte(o, ',') < 0) {
                return -1;
            }
            if ((rc = write_value(o, r, room - 1))) {
                return rc;
            }
        }
        return out_byte(o, ']');
    }
    if ((b & 0xF0) == 0x80 || b == 0xDE || b == 0xDF) {
        if (room <= 0 || (rc = rd_len(r, b, 0xF0, 0x80, 0xDE, 0xDF, &n))) {
            return rc ? rc : NOT_PLAIN;
        }
        if (out_byte(o, '{') < 0) {
            return -1;
        }
        if ((rc = write_members(o, r, n, room - 1, 1, NULL, NULL))) {
            return rc;
        }
        return out_byte(o, '}');
    }
    switch (b) {
    case 0xC0:
        return out_write(o, "null", 4);
    case 0xC2:
        return out_write(o, "false", 5);
    case 0xC3:
        return out_write(o, "true", 4);
    case 0xCA: {
        if ((rc = rd_be(r, 4, &u))) {
            return rc;
        }
        uint32_t w = (uint32_t)u;
        float f;
        memcpy(&f, &w, 4);
        return write_double(o, (double)f);
    }
    case 0xCB: {
        if ((rc = rd_be(r, 8, &u))) {
            return rc;
        }
        double d;
        memcpy(&d, &u, 8);
        return write_double(o, d);
    }
    case 0xCC:
    case 0xCD:
    case 0xCE:
    case 0xCF:
        if ((rc = rd_be(r, 1 << (b - 0xCC), &u))) {
            return rc;
        }
        return write_u64(o, u);
    case 0xD0:
        if ((rc = rd_be(r, 1, &u))) {
            return rc;
        }
        return write_i64(o, (int8_t)u);
    case 0xD1:
        if ((rc = rd_be(r, 2, &u))) {
            return rc;
        }
        return write_i64(o, (int16_t)u);
    case 0xD2:
        if ((rc = rd_be(r, 4, &u))) {
            return rc;
        }
        return write_i64(o, (int32_t)u);
    case 0xD3:
        if ((rc = rd_be(r, 8, &u))) {
            return rc;
        }
        return write_i64(o, (int64_t)u);
    default:
        return NOT_PLAIN; /* bin, ext, and the never-used 0xC1 */
    }
}

/* ---------------------------------------------------------------------------------------------- time */

/* An entry's time as seconds and nanoseconds, by the rules of forwardd.model._decode_plain. */
static int read_time(Reader *r, int64_t received_ns, int64_t *sec, int64_t *nsec) {
    uint8_t b;
    uint64_t u;
    int rc;
    int64_t ns;
    if ((rc = rd_u8(r, &b))) {
        return rc;
    }
    if (b == 0xD7 || b == 0xC7) { /* fixext8, or ext8 of length 8 */
        if (b == 0xC7) {
            if ((rc = rd_be(r, 1, &u))) {
                return rc;
            }
            if (u != 8) {
                return NOT_PLAIN;
            }
        }
        if ((rc = rd_be(r, 1, &u))) {
            return rc;
        }
        if (u != 0) {
            return NOT_PLAIN; /* not an EventTime */
        }
        uint64_t s, f;
        if ((rc = rd_be(r, 4, &s)) || (rc = rd_be(r, 4, &f))) {
            return rc;
        }
        if (f >= (uint64_t)NS) {
            return NOT_PLAIN;
        }
        *sec = (int64_t)s;
        *nsec = (int64_t)f;
        return 0;
    }
    if (b == 0xC0) {
        ns = received_ns;
    } else if (b <= 0x7F || (b >= 0xCC && b <= 0xCF)) {
        if (b <= 0x7F) {
            u = b;
        } else if ((rc = rd_be(r, 1 << (b - 0xCC), &u))) {
            return rc;
        }
        if (u == 0) {
            ns = received_ns;
        } else {
            if (u > (uint64_t)MAX_SECONDS) {
                return NOT_PLAIN;
            }
            *sec = (int64_t)u;
            *nsec = 0;
            return 0;
        }
    } else if (b >= 0xD0 && b <= 0xD3) {
        if ((rc = rd_be(r, 1 << (b - 0xD0), &u))) {
            return rc;
        }
        int64_t v = b == 0xD0 ? (int8_t)u : b == 0xD1 ? (int16_t)u : b == 0xD2 ? (int32_t)u : (int64_t)u;
        if (v < 0) {
            return NOT_PLAIN;
        }
        if (v == 0) {
            ns = received_ns;
        } else {
            if (v > MAX_SECONDS) {
                return NOT_PLAIN;
            }
            *sec = v;
            *nsec = 0;
            return 0;
        }
    } else if (b == 0xCA || b == 0xCB) {
        double t;
        if (b == 0xCA) {
            if ((rc = rd_be(r, 4, &u))) {
                return rc;
            }
            uint32_t w = (uint32_t)u;
            float f;
            memcpy(&f, &w, 4);
            t = f;
        } else {
            if ((rc = rd_be(r, 8, &u))) {
                return rc;
            }
            memcpy(&t, &u, 8);
        }
        if (isnan(t) || t < 0 || t > 1e11) {
            return NOT_PLAIN;
        }
        if (t == 0.0) {
            ns = received_ns;
        } else {
            /* As model._time_ns: whole seconds apart, then the fraction rounded half to even (it may
             * round up to a whole second). Seconds and fraction stay apart: s * 1e9 can pass 2**63. */
            int64_t s = (int64_t)t;
            int64_t frac = (int64_t)nearbyint((t - (double)s) * 1e9);
            if (frac >= NS) {
                s += 1;
                frac -= NS;
            }
            *sec = s;
            *nsec = frac;
            return 0;
        }
    } else if ((b & 0xE0) == 0xE0) {
        return NOT_PLAIN; /* a negative fixint */
    } else {
        return NOT_PLAIN;
    }
    if (ns < 0) {
        return NOT_PLAIN;
    }
    *sec = ns / NS;
    *nsec = ns % NS;
    if (*sec > MAX_SECONDS) {
        return NOT_PLAIN;
    }
    return 0;
}

/* "YYYY-MM-DDTHH:MM:SS." for seconds since the epoch (proleptic Gregorian, UTC), into 20 bytes. */
static void format_second(int64_t s, char *w) {
    int64_t days = s / 86400, rem = s % 86400;
    /* Howard Hinnant's civil_from_days. */
    int64_t z = days + 719468;
    int64_t era = z / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    int hh = (int)(rem / 3600), mm = (int)(rem / 60 % 60), ss = (int)(rem % 60);
    w[0] = (char)('0' + y / 1000 % 10);
    w[1] = (char)('0' + y / 100 % 10);
    w[2] = (char)('0' + y / 10 % 10);
    w[3] = (char)('0' + y % 10);
    w[4] = '-';
    w[5] = (char)('0' + m / 10);
    w[6] = (char)('0' + m % 10);
    w[7] = '-';
    w[8] = (char)('0' + d / 10);
    w[9] = (char)('0' + d % 10);
    w[10] = 'T';
    w[11] = (char)('0' + hh / 10);
    w[12] = (char)('0' + hh % 10);
    w[13] = ':';
    w[14] = (char)('0' + mm / 10);
    w[15] = (char)('0' + mm % 10);
    w[16] = ':';
    w[17] = (char)('0' + ss / 10);
    w[18] = (char)('0' + ss % 10);
    w[19] = '.';
}

/* ---------------------------------------------------------------------------------------------- entry */

/* A call asked to (`release`: a caller's thread, not the event loop's, whose GIL it would hand to other
 * threads and then wait for) over at least this many bytes of entries (about 64 docker events, some 30 us
 * of work) writes with the GIL released; a smaller one is not worth a hand-over of the GIL. */
#define RELEASE_GIL_BYTES (16 * 1024)

/* The runs of one call, kept in C until the GIL is back. */
#define RUNS_FEW 16
typedef struct {
    int64_t sec;
    Py_ssize_t end, count;
} Run;

typedef struct {
    Run *at; /* few, or PyMem_Raw memory once more than RUNS_FEW */
    Py_ssize_t n, cap;
    Run few[RUNS_FEW];
} Runs;

static int runs_push(Out *o, Runs *rs, int64_t sec, Py_ssize_t end, Py_ssize_t count) {
    if (rs->n == rs->cap) {
        Py_ssize_t cap = rs->cap * 2;
        Run *at = rs->at == rs->few ? PyMem_RawMalloc((size_t)cap * sizeof(Run))
                                    : PyMem_RawRealloc(rs->at, (size_t)cap * sizeof(Run));
        if (at == NULL) {
            return no_memory(o);
        }
        if (rs->at == rs->few) {
            memcpy(at, rs->few, sizeof(rs->few));
        }
        rs->at = at;
        rs->cap = cap;
    }
    rs->at[rs->n++] = (Run){sec, end, count};
    return 0;
}

static PyObject *add_run(PyObject *runs, int64_t sec, Py_ssize_t end, Py_ssize_t count) {
    PyObject *t = Py_BuildValue("(Lnn)", (long long)sec, end, count);
    if (t == NULL) {
        return NULL;
    }
    int rc = PyList_Append(runs, t);
    Py_DECREF(t);
    return rc < 0 ? NULL : runs;
}

/* What every line of one call shares: the injected fields, the keys they replace, and the text of the
 * last second written (consecutive events mostly share it). */
typedef struct {
    int64_t received_ns;
    const Py_buffer *time_head, *tag_field, *skip_a, *skip_b;
    Py_ssize_t per_line; /* bytes a line adds besides its record's members */
    int64_t sec;         /* the second `head` holds, -1 before the first */
    char head[20];
} Line;

static void line_init(Line *l, long long received_ns, const Py_buffer *time_head, const Py_buffer *tag_field,
                      const Py_buffer *skip_a, const Py_buffer *skip_b) {
    l->received_ns = received_ns;
    l->time_head = time_head->buf ? time_head : NULL;
    l->tag_field = tag_field->buf ? tag_field : NULL;
    l->skip_a = skip_a->buf ? skip_a : NULL;
    l->skip_b = skip_b->buf ? skip_b : NULL;
    l->per_line = 4 + (l->time_head ? l->time_head->len + 31 : 0) + (l->tag_field ? l->tag_field->len + 1 : 0);
    l->sec = -1;
}

/* The entry at r as one JSON line, newline included, at the end of o; *sec is its second. 0 ok, -1 with a
 * Python exception (out of memory), NOT_PLAIN when the entry is not plain. */
static int write_line(Out *o, Reader *r, Line *l, int64_t *sec) {
    uint8_t b;
    uint64_t n;
    int64_t nsec = 0;
    int rc;
    if ((rc = rd_u8(r, &b)) || (rc = rd_len(r, b, 0xF0, 0x90, 0xDC, 0xDD, &n))) {
        return rc;
    }
    if (n != 2) {
        return NOT_PLAIN;
    }
    if ((rc = read_time(r, l->received_ns, sec, &nsec))) {
        return rc;
    }
    if (*sec != l->sec) {
        l->sec = *sec;
        format_second(*sec, l->head);
    }
    if ((rc = rd_u8(r, &b)) || (rc = rd_len(r, b, 0xF0, 0x80, 0xDE, 0xDF, &n))) {
        return rc;
    }
    if (out_reserve(o, l->per_line) < 0) {
        return -1;
    }
    char *w = o->buf + o->len;
    *w++ = '{';
    if (l->time_head) {
        memcpy(w, l->time_head->buf, (size_t)l->time_head->len);
        w += l->time_head->len;
        memcpy(w, l->head, 20);
        w += 20;
        int64_t f = nsec;
        for (int k = 8; k >= 0; k--) {
            w[k] = (char)('0' + f % 10);
            f /= 10;
        }
        w += 9;
        *w++ = 'Z';
        *w++ = '"';
    }
    if (l->tag_field) {
        if (l->time_head) {
            *w++ = ',';
        }
        memcpy(w, l->tag_field->buf, (size_t)l->tag_field->len);
        w += l->tag_field->len;
    }
    o->len = w - o->buf;
    if ((rc = write_members(o, r, n, MAX_DEPTH, !(l->time_head || l->tag_field), l->skip_a, l->skip_b))) {
        return rc;
    }
    return out_write(o, "}\n", 2);
}

static void release_all(Py_buffer *a, Py_buffer *b, Py_buffer *c, Py_buffer *d, Py_buffer *e) {
    Py_buffer *all[] = {a, b, c, d, e};
    for (int i = 0; i < 5; i++) {
        if (all[i]->buf) {
            PyBuffer_Release(all[i]);
        }
    }
}

PyDoc_STRVAR(json_lines_doc,
             "json_lines(entries, count, received_ns, time_head, tag_field, skip_a, skip_b, release=False)\n"
             "--\n\n"
             "JSON lines for `count` plain PackedForward entries, or None when any entry is not plain.\n\n"
             "Each line is '{' + time_head + 'YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ\"' + ',' + tag_field + ',' +\n"
             "the record's members + '}\\n', leaving out the parts that are None and the record keys equal\n"
             "to skip_a or skip_b. Returns (data, runs): runs lists (second, end offset in data, end index)\n"
             "for each run of consecutive events in the same second.");

static PyObject *json_lines(PyObject *self, PyObject *args) {
    Py_buffer entries = {0}, time_head = {0}, tag_field = {0}, skip_a = {0}, skip_b = {0};
    Py_ssize_t count;
    long long received_ns;
    PyObject *result = NULL, *runs = NULL;
    Out o = {NULL, NULL, 0, 0, NULL};
    Runs rs;
    rs.at = rs.few;
    rs.n = 0;
    rs.cap = RUNS_FEW;
    Line l;
    int release = 0;
    if (!PyArg_ParseTuple(args, "y*nLz*z*z*z*|p", &entries, &count, &received_ns, &time_head, &tag_field,
                          &skip_a, &skip_b, &release)) {
        return NULL;
    }
    line_init(&l, received_ns, &time_head, &tag_field, &skip_a, &skip_b);
    if (count <= 0 || count > 0xFFFFFFFFLL || entries.len <= 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* JSON of a record is rarely more than 1.3x its msgpack; the injected fields are per line. */
    if (count > (PY_SSIZE_T_MAX / 4 - entries.len) / (l.per_line + 1)) {
        PyErr_NoMemory();
        goto done;
    }
    o.cap = entries.len + entries.len / 2 + count * l.per_line + 64;
    o.bytes = PyBytes_FromStringAndSize(NULL, o.cap);
    if (o.bytes == NULL) {
        goto done;
    }
    o.buf = PyBytes_AS_STRING(o.bytes);
    Reader r = {(const uint8_t *)entries.buf, (const uint8_t *)entries.buf + entries.len};
    int64_t run_sec = -1;
    int rc = 0;
    /* The entries and the injected fields are held (Py_buffer) and o.bytes is this call's alone: with
     * the GIL released, nothing here can change under the transcoder. */
    if (release && entries.len >= RELEASE_GIL_BYTES) {
        o.saved = PyEval_SaveThread();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t start = o.len;
        int64_t sec = 0;
        if ((rc = write_line(&o, &r, &l, &sec))) {
            break;
        }
        if (sec != run_sec) {
            if (run_sec >= 0 && (rc = runs_push(&o, &rs, run_sec, start, i))) {
                break;
            }
            run_sec = sec;
        }
    }
    if (rc == 0 && r.p != r.end) {
        rc = NOT_PLAIN; /* more bytes than `count` entries: not what the framing said */
    }
    if (rc == 0) {
        rc = runs_push(&o, &rs, run_sec, o.len, count);
    }
    if (o.saved != NULL) {
        PyEval_RestoreThread(o.saved);
        o.saved = NULL;
    }
    if (rc < 0) {
        goto done;
    }
    if (rc == NOT_PLAIN) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    runs = PyList_New(0);
    if (runs == NULL) {
        goto done;
    }
    for (Py_ssize_t k = 0; k < rs.n; k++) {
        if (add_run(runs, rs.at[k].sec, rs.at[k].end, rs.at[k].count) == NULL) {
            goto done;
        }
    }
    if (_PyBytes_Resize(&o.bytes, o.len) < 0) {
        goto done;
    }
    result = Py_BuildValue("(OO)", o.bytes, runs);
done:
    if (rs.at != rs.few) {
        PyMem_RawFree(rs.at);
    }
    Py_XDECREF(o.bytes);
    Py_XDECREF(runs);
    release_all(&entries, &time_head, &tag_field, &skip_a, &skip_b);
    return result;
}

PyDoc_STRVAR(json_values_doc,
             "json_values(entries, start, limit, received_ns, time_head, tag_field, skip_a, skip_b)\n"
             "--\n\n"
             "The lines of json_lines one bytes object each, without their newline, for at most `limit`\n"
             "entries from byte offset `start` of `entries`: (values, end offset), or None when any of\n"
             "those entries is not plain (or is cut short by the end of `entries`).\n\n"
             "A caller walks a chunk in slices this way (a Kafka message per event), so no text of the whole\n"
             "chunk is built, and the values of one slice are made while its memory is still warm.");

static PyObject *json_values(PyObject *self, PyObject *args) {
    Py_buffer entries = {0}, time_head = {0}, tag_field = {0}, skip_a = {0}, skip_b = {0};
    Py_ssize_t start, limit;
    long long received_ns;
    PyObject *result = NULL, *values = NULL;
    Out o = {NULL, NULL, 0, 0, NULL};
    Line l;
    if (!PyArg_ParseTuple(args, "y*nnLz*z*z*z*", &entries, &start, &limit, &received_ns, &time_head,
                          &tag_field, &skip_a, &skip_b)) {
        return NULL;
    }
    line_init(&l, received_ns, &time_head, &tag_field, &skip_a, &skip_b);
    if (start < 0 || start > entries.len || limit < 0) {
        PyErr_SetString(PyExc_ValueError, "start must be within entries and limit not negative");
        goto done;
    }
    /* One line at a time, so the buffer only grows past this for a record larger than it. */
    o.cap = 4096 + l.per_line;
    o.bytes = PyBytes_FromStringAndSize(NULL, o.cap);
    if (o.bytes == NULL) {
        goto done;
    }
    o.buf = PyBytes_AS_STRING(o.bytes);
    values = PyList_New(0);
    if (values == NULL) {
        goto done;
    }
    Reader r = {(const uint8_t *)entries.buf + start, (const uint8_t *)entries.buf + entries.len};
    int rc = 0;
    for (Py_ssize_t i = 0; i < limit && r.p < r.end; i++) {
        int64_t sec = 0;
        o.len = 0;
        if ((rc = write_line(&o, &r, &l, &sec))) {
            break;
        }
        PyObject *v = PyBytes_FromStringAndSize(o.buf, o.len - 1);
        if (v == NULL) {
            rc = -1;
            break;
        }
        rc = PyList_Append(values, v);
        Py_DECREF(v);
        if (rc < 0) {
            break;
        }
    }
    if (rc < 0) {
        goto done;
    }
    if (rc == NOT_PLAIN) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = Py_BuildValue("(On)", values, (Py_ssize_t)((const char *)r.p - (const char *)entries.buf));
done:
    Py_XDECREF(o.bytes);
    Py_XDECREF(values);
    release_all(&entries, &time_head, &tag_field, &skip_a, &skip_b);
    return result;
}

static PyMethodDef methods[] = {
    {"json_lines", json_lines, METH_VARARGS, json_lines_doc},
    {"json_values", json_values, METH_VARARGS, json_values_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "forwardd.outputs._jsonl",
    "PackedForward entries to JSON lines in one pass (see forwardd.outputs.formats).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jsonl(void) {
    init_class();
    return PyModule_Create(&module);
}
