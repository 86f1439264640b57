/* CellSpeedWindow.to_bytes / from_bytes: the reference's JSON, byte for byte.
 *
 * The reference writes ``orjson.dumps({"b": {start: {sec: [n, total, hist, sorted(devices)]}},
 * "d": {dev: [hwm, hex(mask), last_seen]}}, option=OPT_NON_STR_KEYS)``: compact, keys in
 * insertion order, int keys as strings. Written here directly (every touched cell is
 * rewritten at each write-back). orjson's floats are Python's repr except for exponents
 * below -4: ``0.00001``..``0.0000x`` positional at -5, then ``1e-7`` (no zero padding); its
 * strings escape ``"``, ``\``, and controls below 0x20 only (short forms for \b \t \n \f \r),
 * the rest raw UTF-8. tests/unit/test_window_c.py compares the bytes with the reference's.
 * from_bytes parses with orjson.loads (given at bind) and fills the arrays.
 */
#include "_speedwin.h"
#include <math.h>

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

static int grow_buf(Buf *b, size_t more) {
    size_t nc = b->cap ? b->cap : 4096;
    while (nc < b->n + more) nc *= 2;
    char *p = PyMem_Realloc(b->p, nc);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = nc;
    return 0;
}

static inline int reserve(Buf *b, size_t more) { return b->n + more <= b->cap ? 0 : grow_buf(b, more); }

static inline int put(Buf *b, const char *s, size_t n) {
    if (reserve(b, n) < 0) return -1;
    char *o = b->p + b->n;
    for (size_t i = 0; i < n; i++) o[i] = s[i]; /* short pieces: no memcpy call */
    b->n += n;
    return 0;
}

#define PUTS(b, lit) put(b, lit, sizeof(lit) - 1)

/* decimal digits of v ending at ``end``; returns where they start (snprintf was most of to_bytes) */
static char *digits(char *end, long long v) {
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--end = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--end = '-';
    return end;
}

static int put_i64(Buf *b, long long v) {
    char tmp[24], *s = digits(tmp + sizeof tmp, v);
    return put(b, s, (size_t)(tmp + sizeof tmp - s));
}

static int put_key(Buf *b, long long v) { /* "v": */
    char tmp[32], *end = tmp + sizeof tmp;
    *--end = ':';
    *--end = '"';
    char *s = digits(end, v);
    *--s = '"';
    return put(b, s, (size_t)(tmp + sizeof tmp - s));
}

static int put_double(Buf *b, double x) {
    if (!isfinite(x)) return PUTS(b, "null");
    char *r = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (r == NULL) return -1;
    int rc;
    char *e = strchr(r, 'e');
    int exp = e == NULL ? 0 : atoi(e + 1);
    if (e == NULL || exp >= 16) {
        rc = put(b, r, strlen(r));
    } else if (exp >= -5) { /* orjson: positional down to 1e-5 */
        char tmp[64];
        size_t n = 0;
        const char *m = r;
        if (*m == '-') tmp[n++] = *m++;
        tmp[n++] = '0';
        tmp[n++] = '.';
        for (int i = 0; i < -exp - 1; i++) tmp[n++] = '0';
        for (; m < e; m++)
            if (*m != '.') tmp[n++] = *m;
        rc = put(b, tmp, n);
    } else { /* 1.5e-07 -> 1.5e-7 */
        char tmp[16];
        int n = snprintf(tmp, sizeof tmp, "e%d", exp);
        rc = put(b, r, (size_t)(e - r)) < 0 ? -1 : put(b, tmp, (size_t)n);
    }
    PyMem_Free(r);
    return rc;
}

/* put_double through a cache entry (NULL: none) */
static int put_double_cached(Buf *b, double x, Fmt *f) {
    if (f != NULL && f->len && memcmp(&f->v, &x, sizeof x) == 0) return put(b, f->txt, f->len);
    size_t n0 = b->n;
    if (put_double(b, x) < 0) return -1;
    if (f != NULL) {
        size_t len = b->n - n0;
        f->len = 0;
        if (len < sizeof f->txt) {
            memcpy(f->txt, b->p + n0, len);
            f->v = x;
            f->len = (uint8_t)len;
        }
    }
    return 0;
}

/* room for ``n`` cache entries (new ones empty); NULL on no memory: written uncached */
static Fmt *fmt_for(Fmt **arr, Py_ssize_t *cap, Py_ssize_t n) {
    if (n <= *cap) return *arr;
    Fmt *p = PyMem_Realloc(*arr, (size_t)n * sizeof(Fmt));
    if (p == NULL) return NULL;
    for (Py_ssize_t i = *cap; i < n; i++) p[i].len = 0;
    *arr = p;
    *cap = n;
    return p;
}

static int put_str(Buf *b, PyObject *s) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (u == NULL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "str is not valid UTF-8: surrogates not allowed");
        return -1;
    }
    if (reserve(b, (size_t)n * 6 + 2) < 0) return -1;
    char *o = b->p + b->n;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)u[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\t': *o++ = 't'; break;
        case '\n': *o++ = 'n'; break;
        case '\f': *o++ = 'f'; break;
        case '\r': *o++ = 'r'; break;
        default:
            o += sprintf(o, "u%04x", c);
        }
    }
    *o++ = '"';
    b->n = (size_t)(o - b->p);
    return 0;
}

static int put_mask(Buf *b, const uint64_t *m) { /* hex(mask), quoted */
    static const char hexd[] = "0123456789abcdef";
    char tmp[72], *o = tmp;
    int top = 3;
    while (top > 0 && m[top] == 0) top--;
    *o++ = '"';
    *o++ = '0';
    *o++ = 'x';
    int started = 0;
    for (int i = top; i >= 0; i--) {
        for (int sh = 60; sh >= 0; sh -= 4) {
            int d = (int)((m[i] >> sh) & 15);
            if (d || started || (i == 0 && sh == 0)) {
                *o++ = hexd[d];
                started = 1;
            }
        }
    }
    *o++ = '"';
    return put(b, tmp, (size_t)(o - tmp));
}

static int cmp_str(const void *pa, const void *pb) { /* sorted(): code point order */
    PyObject *a = *(PyObject *const *)pa, *b = *(PyObject *const *)pb;
    if (PyUnicode_KIND(a) == PyUnicode_1BYTE_KIND && PyUnicode_KIND(b) == PyUnicode_1BYTE_KIND) {
        Py_ssize_t na = PyUnicode_GET_LENGTH(a), nb = PyUnicode_GET_LENGTH(b);
        int c = memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)(na < nb ? na : nb));
        return c ? c : (na > nb) - (na < nb);
    }
    return PyUnicode_Compare(a, b);
}

static int put_agg(Buf *b, const Agg *a, Fmt *f) {
    if (put_key(b, a->sec) < 0 || PUTS(b, "[") < 0 || put_i64(b, a->n) < 0 || PUTS(b, ",") < 0 ||
        put_double_cached(b, a->total, f) < 0 || PUTS(b, ",{") < 0)
        return -1;
    for (Py_ssize_t k = 0; k < a->nhist; k++)
        if ((k && PUTS(b, ",") < 0) || put_key(b, a->hist[k].bin) < 0 || put_i64(b, a->hist[k].count) < 0) return -1;
    if (PUTS(b, "},[") < 0) return -1;
    PyObject *stack[64], **devs = a->ndev <= 64 ? stack : PyMem_Malloc((size_t)a->ndev * sizeof(PyObject *));
    if (devs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t nd = 0;
    for (Py_ssize_t k = 0; k < a->capdev; k++)
        if (a->devs[k].dev != NULL) devs[nd++] = a->devs[k].dev;
    if (nd <= 24) { /* a bucket's few devices: insertion sort (glibc's qsort copies through memmove) */
        for (Py_ssize_t i = 1; i < nd; i++) {
            PyObject *x = devs[i];
            Py_ssize_t j = i;
            for (; j > 0 && cmp_str(&devs[j - 1], &x) > 0; j--) devs[j] = devs[j - 1];
            devs[j] = x;
        }
    } else {
        qsort(devs, (size_t)nd, sizeof(PyObject *), cmp_str);
    }
    int rc = 0;
    for (Py_ssize_t k = 0; k < nd && rc == 0; k++) rc = (k && PUTS(b, ",") < 0) || put_str(b, devs[k]) < 0 ? -1 : 0;
    if (devs != stack) PyMem_Free(devs);
    return rc < 0 ? -1 : PUTS(b, "]]");
}

/* one buffer for every call, kept between them (the GIL is held, nothing re-enters) */
static Buf shared = {NULL, 0, 0};

PyObject *win_to_bytes(PyObject *self, PyObject *unused) {
    Win *w = (Win *)self;
    Buf b = shared;
    b.n = 0;
    if (PUTS(&b, "{\"b\":{") < 0) goto fail;
    for (Py_ssize_t i = 0; i < w->nbuckets; i++) {
        Bucket *bk = &w->buckets[i];
        if ((i && PUTS(&b, ",") < 0) || put_key(&b, bk->start) < 0 || PUTS(&b, "{") < 0) goto fail;
        Fmt *f = fmt_for(&bk->fmt, &bk->capfmt, bk->nsecs);
        for (Py_ssize_t s = 0; s < bk->nsecs; s++)
            if ((s && PUTS(&b, ",") < 0) || put_agg(&b, &bk->secs[s], f ? &f[s] : NULL) < 0) goto fail;
        if (PUTS(&b, "}") < 0) goto fail;
    }
    if (PUTS(&b, "},\"d\":{") < 0) goto fail;
    Fmt *f = fmt_for(&w->seen_fmt, &w->capfmt, w->nseen);
    for (Py_ssize_t i = 0; i < w->nseen; i++) {
        Seen *e = &w->seen[i];
        if ((i && PUTS(&b, ",") < 0) || put_str(&b, e->dev) < 0 || PUTS(&b, ":[") < 0 || put_i64(&b, e->hwm) < 0 ||
            PUTS(&b, ",") < 0 || put_mask(&b, e->mask) < 0 || PUTS(&b, ",") < 0 ||
            (e->last_int ? put_i64(&b, (long long)e->last_seen) : put_double_cached(&b, e->last_seen, f ? &f[i] : NULL)) < 0 ||
            PUTS(&b, "]") < 0)
            goto fail;
    }
    if (PUTS(&b, "}}") < 0) goto fail;
    shared = b;
    return PyBytes_FromStringAndSize(b.p, (Py_ssize_t)b.n);
fail:
    shared = b;
    return NULL;
}

/* -- from_bytes ---------------------------------------------------------------------------- */
static int int_key(PyObject *k, int64_t *out) { /* int(k) of a JSON key */
    PyObject *v = PyUnicode_Check(k) ? PyLong_FromUnicodeObject(k, 10) : NULL;
    if (v == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "CellSpeedWindow.from_bytes: a key is not a str");
        return -1;
    }
    int rc = parse_seq(v, out);
    Py_DECREF(v);
    return rc;
}

static PyObject *item(PyObject *seq, Py_ssize_t i, Py_ssize_t n) {
    if (!PyList_Check(seq) || PyList_GET_SIZE(seq) != n) {
        PyErr_SetString(PyExc_ValueError, "CellSpeedWindow.from_bytes: not the layout to_bytes writes");
        return NULL;
    }
    return PyList_GET_ITEM(seq, i);
}

static int load_mask(PyObject *hex, uint64_t *m) {
    if (!PyUnicode_Check(hex)) {
        PyErr_SetString(PyExc_TypeError, "CellSpeedWindow.from_bytes: a mask is not a hex str");
        return -1;
    }
    PyObject *v = PyLong_FromUnicodeObject(hex, 16);
    if (v == NULL) return -1;
    PyObject *sixty4 = PyLong_FromLong(64);
    int rc = sixty4 == NULL ? -1 : 0;
    for (int i = 0; i < 4 && rc == 0; i++) {
        m[i] = PyLong_AsUnsignedLongLongMask(v);
        PyObject *nv = PyNumber_Rshift(v, sixty4);
        Py_SETREF(v, nv);
        if (v == NULL) rc = -1;
    }
    if (rc == 0 && Py_SIZE(v) != 0) { /* a 3.11 int: the sign and number of digits */
        PyErr_SetString(PyExc_ValueError, "CellSpeedWindow.from_bytes: a mask past 256 bits or negative");
        rc = -1;
    }
    Py_XDECREF(v);
    Py_XDECREF(sixty4);
    return rc;
}

static int load_seen(Win *w, PyObject *d) {
    PyObject *dev, *e;
    Py_ssize_t pos = 0;
    while (PyDict_Next(d, &pos, &dev, &e)) {
        int64_t hwm;
        Num last;
        uint64_t mask[4];
        PyObject *h0 = item(e, 0, 3);
        if (h0 == NULL || check_device(dev) < 0 || parse_seq(h0, &hwm) < 0 || load_mask(PyList_GET_ITEM(e, 1), mask) < 0 ||
            parse_num(PyList_GET_ITEM(e, 2), &last) < 0)
            return -1;
        Py_hash_t h = PyObject_Hash(dev);
        if (h == -1) return -1;
        Seen *s = seen_append(w, dev, h);
        if (s == NULL) return -1;
        s->hwm = hwm;
        memcpy(s->mask, mask, sizeof mask);
        s->last_seen = last.v;
        s->last_int = last.is_int;
    }
    return 0;
}

static int load_agg(Win *w, Bucket *bk, PyObject *sec_k, PyObject *v) {
    int64_t sec, n;
    Num total;
    PyObject *n_o = item(v, 0, 4);
    if (n_o == NULL || int_key(sec_k, &sec) < 0 || parse_seq(n_o, &n) < 0 || parse_num(PyList_GET_ITEM(v, 1), &total) < 0)
        return -1;
    PyObject *hist = PyList_GET_ITEM(v, 2), *devs = PyList_GET_ITEM(v, 3);
    if (!PyDict_Check(hist) || !PyList_Check(devs)) {
        PyErr_SetString(PyExc_ValueError, "CellSpeedWindow.from_bytes: not the layout to_bytes writes");
        return -1;
    }
    Agg *a = agg_append(&bk->secs, &bk->nsecs, &bk->capsecs, sec);
    if (a == NULL) return -1;
    a->n = n;
    a->total = total.v;
    PyObject *k, *c;
    Py_ssize_t pos = 0;
    while (PyDict_Next(hist, &pos, &k, &c)) {
        int64_t bin, count;
        if (int_key(k, &bin) < 0 || parse_seq(c, &count) < 0 || hist_add(a, bin, count) < 0) return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(devs); i++) {
        PyObject *dev = PyList_GET_ITEM(devs, i);
        if (check_device(dev) < 0) return -1;
        Py_hash_t h = PyObject_Hash(dev);
        if (h == -1) return -1;
        Py_ssize_t ix = seen_lookup(w, dev, h); /* the dedupe's str: one object per device */
        if (devset_add(a, ix >= 0 ? w->seen[ix].dev : dev, h) < 0) return -1;
    }
    return 0;
}

PyObject *win_from_bytes(PyObject *cls, PyObject *raw) {
    if (loads_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pipeline._window.bind() was not called");
        return NULL;
    }
    PyObject *doc = PyObject_CallOneArg(loads_fn, raw);
    if (doc == NULL) return NULL;
    PyObject *w = NULL, *b, *d;
    if (!PyDict_Check(doc) || (b = PyDict_GetItemString(doc, "b")) == NULL ||
        (d = PyDict_GetItemString(doc, "d")) == NULL || !PyDict_Check(b) || !PyDict_Check(d)) {
        PyErr_SetString(PyExc_ValueError, "CellSpeedWindow.from_bytes: not the layout to_bytes writes");
        goto fail;
    }
    w = ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    if (w == NULL || load_seen((Win *)w, d) < 0) goto fail;
    PyObject *start_k, *sectors;
    Py_ssize_t pos = 0;
    while (PyDict_Next(b, &pos, &start_k, &sectors)) {
        int64_t start;
        if (int_key(start_k, &start) < 0) goto fail;
        if (!PyDict_Check(sectors)) {
            PyErr_SetString(PyExc_ValueError, "CellSpeedWindow.from_bytes: not the layout to_bytes writes");
            goto fail;
        }
        Bucket *bk = bucket_append((Win *)w, start);
        if (bk == NULL) goto fail;
        PyObject *sec_k, *v;
        Py_ssize_t p2 = 0;
        while (PyDict_Next(sectors, &p2, &sec_k, &v))
            if (load_agg((Win *)w, bk, sec_k, v) < 0) goto fail;
    }
    Py_DECREF(doc);
    return w;
fail:
    Py_XDECREF(w);
    Py_DECREF(doc);
    return NULL;
}
