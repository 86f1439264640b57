/* pipeline._window.CellSpeedWindow: a cell's speed window as a native type with compact storage.
 *
 * Why: the worker is memory-bound. The Python window (kept as ``pipeline.speed.ReferenceWindow``)
 * is a web of dicts, sets, dataclasses, ints and floats scattered over the heap; counting a ping
 * touched a dozen of them and replaced several int/float objects, freeing cold ones. Here a
 * window is a handful of flat arrays, and a counted ping creates no Python object.
 *
 * Storage:
 * - dedupe (``seen``): an array of inline ``Seen`` structs in insertion order {device str (an
 *   owned reference), its hash, int64 hwm, uint64 mask[4] (bit i: seq hwm - i was counted),
 *   double last_seen (+ whether it was an int)}, indexed by an open-addressing table of int32
 *   (linear probing on the str's hash; compared by pointer first, then hash and string
 *   equality). Entries leave only in the sweep of ``expire``, which compacts and re-indexes.
 * - buckets: an array of {start, sectors} in insertion order; a sector's ``Agg`` is {n, total
 *   (double), histogram as (bin, count) pairs in the order bins came, device set}. The device
 *   set is a linear-probing table of {str, hash} (owned references); a counted ping stores the
 *   dedupe entry's str, so one device is mostly one pointer, compared without touching the str.
 * - ``_closed``: the merged buckets before the open one (same ``Agg`` arrays), with its window
 *   key and open-bucket start, exactly as in the reference: a reading merges two things, a late
 *   ping is added to the merge too, a dropped bucket discards it.
 *
 * Semantics are the reference's, including the float arithmetic order (a bucket's total sums
 * its speeds in arrival order; the merge adds bucket totals in bucket insertion order), so
 * ``total`` and the mean are bit-equal; ``to_bytes`` writes the reference's orjson bytes
 * (pipeline/_speedwin_io.c). tests/unit/test_window_c.py holds the two equal. Deviations,
 * for inputs ingest never lets through (pipeline.pings: 0 <= seq < 2**53, finite floats):
 * seqs must be ints within 64 bits, numbers floats or ints below 2**53 in magnitude (else
 * OverflowError), devices str; a NaN or infinite value raises what the reference raises, but
 * leaves the buckets untouched (the reference may leave them half-updated).
 */
#include "_speedwin.h"
#include <math.h>
#include <structmember.h>

PyTypeObject *WinType = NULL;
static PyTypeObject *SeenViewType = NULL;
PyObject *SeqWindowCls = NULL, *SectorBucketCls = NULL, *SectorStatsCls = NULL, *loads_fn = NULL;
double BUCKET_S = 30, WINDOW_S = 300, BIN_PER_MPS = 2, SECTOR_WIDTH = 45, DEVICE_TTL_S = 360, SEEN_SWEEP_S = 60;
int64_t BUCKET_I = 30;

#define EXACT_MAX 9007199254740992.0 /* 2**53 */

/* -- numbers ------------------------------------------------------------------------------- */
int parse_num(PyObject *o, Num *out) {
    if (PyFloat_CheckExact(o)) {
        out->v = PyFloat_AS_DOUBLE(o);
        out->is_int = 0;
        return 0;
    }
    if (PyLong_CheckExact(o)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (x == -1 && PyErr_Occurred()) return -1;
        if (overflow || x >= (long long)EXACT_MAX || x <= -(long long)EXACT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "CellSpeedWindow: an int number past 2**53");
            return -1;
        }
        out->v = (double)x;
        out->is_int = 1;
        return 0;
    }
    if (PyFloat_Check(o)) {
        out->v = PyFloat_AS_DOUBLE(o);
        out->is_int = 0;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "CellSpeedWindow: a number must be a float or an int, not %.100s",
                 Py_TYPE(o)->tp_name);
    return -1;
}

int parse_seq(PyObject *o, int64_t *out) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "CellSpeedWindow: seq must be an int, not %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    long long x = PyLong_AsLongLong(o);
    if (x == -1 && PyErr_Occurred()) return -1;
    *out = x;
    return 0;
}

int check_device(PyObject *dev) {
    if (!PyUnicode_CheckExact(dev)) {
        PyErr_Format(PyExc_TypeError, "CellSpeedWindow: device must be a str, not %.100s", Py_TYPE(dev)->tp_name);
        return -1;
    }
    return PyUnicode_READY(dev);
}

/* Python's float ``a // b`` (Objects/floatobject.c, _float_div_mod), for b > 0 */
static double py_floordiv(double a, double b) {
    double mod = fmod(a, b);
    double div = (a - mod) / b;
    if (mod && ((b < 0) != (mod < 0))) div -= 1.0;
    if (div) {
        double floordiv = floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
        return floordiv;
    }
    return copysign(0.0, a / b);
}

/* Python's float ``a % b`` for b > 0 */
static double py_mod(double a, double b) {
    double mod = fmod(a, b);
    if (mod) {
        if ((b < 0) != (mod < 0)) mod += b;
    } else {
        mod = copysign(0.0, b);
    }
    return mod;
}

/* int(x) of a float for the sizes a window takes: NaN ValueError, beyond int64 OverflowError */
static int to_int64(double x, int64_t *out) {
    if (isnan(x)) {
        PyErr_SetString(PyExc_ValueError, "cannot convert float NaN to integer");
        return -1;
    }
    if (!(x > -9.2e18 && x < 9.2e18)) {
        PyErr_SetString(PyExc_OverflowError, "cannot convert float infinity to integer");
        return -1;
    }
    *out = (int64_t)x;
    return 0;
}

int check_now(Num now) {
    if (!isfinite(now.v) || fabs(now.v) >= EXACT_MAX) {
        PyErr_SetString(isnan(now.v) ? PyExc_ValueError : PyExc_OverflowError, "CellSpeedWindow: now out of range");
        return -1;
    }
    return 0;
}

/* -- storage ------------------------------------------------------------------------------- */
static inline int str_eq(PyObject *a, PyObject *b) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    if (n != PyUnicode_GET_LENGTH(b) || PyUnicode_KIND(a) != PyUnicode_KIND(b)) return 0;
    return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
}

static int grow(void **arr, Py_ssize_t *cap, Py_ssize_t need, size_t size) {
    if (need <= *cap) return 0;
    Py_ssize_t nc = *cap ? *cap : 2;
    while (nc < need) nc *= 2;
    void *p = PyMem_Realloc(*arr, (size_t)nc * size);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *arr = p;
    *cap = nc;
    return 0;
}

#define IDX_EMPTY UINT64_MAX
#define IDX_TAG(h) ((uint64_t)(h) >> 32 << 32)
#define IDX_SLOT(h, ix) (IDX_TAG(h) | (uint32_t)(ix))

Py_ssize_t seen_lookup(Win *w, PyObject *dev, Py_hash_t h) {
    if (w->index == NULL) return -1;
    size_t m = w->idxmask, i = (size_t)h & m;
    uint64_t tag = IDX_TAG(h);
    for (;;) {
        uint64_t v = w->index[i];
        if (v == IDX_EMPTY) return -1;
        if ((v >> 32 << 32) == tag) {
            Py_ssize_t ix = (Py_ssize_t)(uint32_t)v;
            Seen *e = &w->seen[ix];
            if (e->dev == dev || (e->hash == h && str_eq(e->dev, dev))) return ix;
        }
        i = (i + 1) & m;
    }
}

static int reindex(Win *w, size_t slots) {
    PyMem_Free(w->index);
    w->index = NULL;
    w->idxmask = 0;
    if (slots == 0) return 0;
    uint64_t *ix = PyMem_Malloc(slots * sizeof(uint64_t));
    if (ix == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(ix, 0xff, slots * sizeof(uint64_t)); /* IDX_EMPTY */
    size_t m = slots - 1;
    for (Py_ssize_t k = 0; k < w->nseen; k++) {
        size_t i = (size_t)w->seen[k].hash & m;
        while (ix[i] != IDX_EMPTY) i = (i + 1) & m;
        ix[i] = IDX_SLOT(w->seen[k].hash, k);
    }
    w->index = ix;
    w->idxmask = m;
    return 0;
}

/* index slots for n entries: at most 2/3 full */
static size_t slots_for(Py_ssize_t n) {
    if (n == 0) return 0;
    size_t s = 8;
    while ((size_t)n * 3 > s * 2) s *= 2;
    return s;
}

/* a new dedupe entry for ``dev`` (not there yet), hwm/mask/last_seen left to the caller */
Seen *seen_append(Win *w, PyObject *dev, Py_hash_t h) {
    if (w->nseen >= INT32_MAX - 1) {
        PyErr_SetString(PyExc_OverflowError, "CellSpeedWindow: too many devices");
        return NULL;
    }
    if (grow((void **)&w->seen, &w->capseen, w->nseen + 1, sizeof(Seen)) < 0) return NULL;
    Seen *e = &w->seen[w->nseen++];
    memset(e, 0, sizeof(*e));
    e->dev = Py_NewRef(dev);
    e->hash = h;
    if (w->index == NULL || (size_t)w->nseen * 3 > (w->idxmask + 1) * 2) {
        if (reindex(w, slots_for(w->nseen)) < 0) {
            w->nseen--;
            Py_DECREF(e->dev);
            return NULL;
        }
    } else {
        size_t m = w->idxmask, i = (size_t)h & m;
        while (w->index[i] != IDX_EMPTY) i = (i + 1) & m;
        w->index[i] = IDX_SLOT(h, w->nseen - 1);
    }
    return e;
}

int devset_add(Agg *a, PyObject *dev, Py_hash_t h) {
    if ((a->ndev + 1) * 2 > a->capdev) {
        Py_ssize_t nc = a->capdev ? a->capdev * 2 : 8;
        DevSlot *t = PyMem_Calloc((size_t)nc, sizeof(DevSlot));
        if (t == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        size_t m = (size_t)nc - 1;
        for (Py_ssize_t k = 0; k < a->capdev; k++) {
            if (a->devs[k].dev == NULL) continue;
            size_t i = (size_t)a->devs[k].hash & m;
            while (t[i].dev != NULL) i = (i + 1) & m;
            t[i] = a->devs[k];
        }
        PyMem_Free(a->devs);
        a->devs = t;
        a->capdev = nc;
    }
    size_t m = (size_t)a->capdev - 1, i = (size_t)h & m;
    for (;;) {
        DevSlot *s = &a->devs[i];
        if (s->dev == NULL) {
            s->dev = Py_NewRef(dev);
            s->hash = h;
            a->ndev++;
            return 1;
        }
        if (s->dev == dev || (s->hash == h && str_eq(s->dev, dev))) return 0;
        i = (i + 1) & m;
    }
}

static int devset_has(const Agg *a, PyObject *dev, Py_hash_t h) {
    if (a->capdev == 0) return 0;
    size_t m = (size_t)a->capdev - 1, i = (size_t)h & m;
    for (;;) {
        const DevSlot *s = &a->devs[i];
        if (s->dev == NULL) return 0;
        if (s->dev == dev || (s->hash == h && str_eq(s->dev, dev))) return 1;
        i = (i + 1) & m;
    }
}

int hist_add(Agg *a, int64_t bin, int64_t count) {
    for (Py_ssize_t k = 0; k < a->nhist; k++) {
        if (a->hist[k].bin == bin) {
            a->hist[k].count += count;
            return 0;
        }
    }
    if (grow((void **)&a->hist, &a->caphist, a->nhist + 1, sizeof(HistPair)) < 0) return -1;
    a->hist[a->nhist].bin = bin;
    a->hist[a->nhist++].count = count;
    return 0;
}

static void agg_clear(Agg *a) {
    for (Py_ssize_t k = 0; k < a->capdev; k++) Py_XDECREF(a->devs[k].dev);
    PyMem_Free(a->devs);
    PyMem_Free(a->hist);
    memset(a, 0, sizeof(*a));
}

static void aggs_free(Agg **arr, Py_ssize_t *n, Py_ssize_t *cap) {
    for (Py_ssize_t k = 0; k < *n; k++) agg_clear(&(*arr)[k]);
    PyMem_Free(*arr);
    *arr = NULL;
    *n = *cap = 0;
}

Agg *agg_append(Agg **arr, Py_ssize_t *n, Py_ssize_t *cap, int64_t sec) {
    if (grow((void **)arr, cap, *n + 1, sizeof(Agg)) < 0) return NULL;
    Agg *a = &(*arr)[(*n)++];
    memset(a, 0, sizeof(*a));
    a->sec = sec;
    return a;
}

static Agg *agg_find(Agg *arr, Py_ssize_t n, int64_t sec) {
    for (Py_ssize_t k = 0; k < n; k++)
        if (arr[k].sec == sec) return &arr[k];
    return NULL;
}

Bucket *bucket_append(Win *w, int64_t start) {
    if (grow((void **)&w->buckets, &w->capbuckets, w->nbuckets + 1, sizeof(Bucket)) < 0) return NULL;
    Bucket *b = &w->buckets[w->nbuckets++];
    memset(b, 0, sizeof(*b));
    b->start = start;
    return b;
}

static void drop_closed(Win *w) {
    aggs_free(&w->closed, &w->nclosed, &w->capclosed);
    w->has_closed = 0;
}

/* SectorBucket.add: n, total, histogram bin, device */
static int agg_count(Agg *a, double speed, PyObject *dev, Py_hash_t h) {
    a->n += 1;
    a->total += speed;
    if (hist_add(a, (int64_t)(speed * BIN_PER_MPS), 1) < 0) return -1; /* int(): truncation */
    return devset_add(a, dev, h) < 0 ? -1 : 0;
}

/* _merge_into: ``b`` into the sector ``b->sec`` of ``arr`` (a copy if it is new there) */
static int agg_merge(Agg **arr, Py_ssize_t *n, Py_ssize_t *cap, const Agg *b) {
    Agg *m = agg_find(*arr, *n, b->sec);
    if (m == NULL) {
        if ((m = agg_append(arr, n, cap, b->sec)) == NULL) return -1;
        m->n = b->n;
        m->total = b->total;
    } else {
        m->n += b->n;
        m->total += b->total;
    }
    for (Py_ssize_t k = 0; k < b->nhist; k++)
        if (hist_add(m, b->hist[k].bin, b->hist[k].count) < 0) return -1;
    for (Py_ssize_t k = 0; k < b->capdev; k++)
        if (b->devs[k].dev != NULL && devset_add(m, b->devs[k].dev, b->devs[k].hash) < 0) return -1;
    return 0;
}

/* -- the dedupe ---------------------------------------------------------------------------- */
static inline void mask_shift(uint64_t *m, int64_t s) { /* m <<= s (0 < s < 256), within 256 bits */
    int words = (int)(s / 64), bits = (int)(s % 64);
    for (int i = 3; i >= 0; i--) {
        uint64_t v = 0;
        int from = i - words;
        if (from >= 0) {
            v = m[from] << bits;
            if (bits && from > 0) v |= m[from - 1] >> (64 - bits);
        }
        m[i] = v;
    }
}

/* accept(): 1 new, 0 counted already, -1 error; *entry: the device's entry */
static int dedupe(Win *w, PyObject *dev, Py_hash_t h, int64_t seq, Num alive, Seen **entry) {
    Py_ssize_t ix = seen_lookup(w, dev, h);
    Seen *e;
    if (ix < 0) {
        if ((e = seen_append(w, dev, h)) == NULL) return -1;
        e->hwm = seq;
        e->mask[0] = 1;
        e->last_seen = alive.v;
        e->last_int = alive.is_int;
        *entry = e;
        return 1;
    }
    e = *entry = &w->seen[ix];
    e->last_seen = alive.v;
    e->last_int = alive.is_int;
    if (seq > e->hwm) {
        __int128 shift = (__int128)seq - e->hwm;
        if (shift < 256) {
            mask_shift(e->mask, (int64_t)shift);
            e->mask[0] |= 1;
        } else {
            e->mask[0] = 1;
            e->mask[1] = e->mask[2] = e->mask[3] = 0;
        }
        e->hwm = seq;
        return 1;
    }
    __int128 off = (__int128)e->hwm - seq;
    if (off >= 256) return 0;
    int o = (int)off;
    uint64_t bit = (uint64_t)1 << (o % 64);
    if (e->mask[o / 64] & bit) return 0;
    e->mask[o / 64] |= bit;
    return 1;
}

int win_add(Win *w, PyObject *dev, int64_t seq, Num ts, Num speed, Num heading, Num now) {
    if (ts.v <= now.v - WINDOW_S) return 0; /* already over (and -inf) */
    Num alive = ts.v > now.v ? ts : now;
    Py_hash_t h = PyObject_Hash(dev);
    if (h == -1) return -1;
    Seen *e;
    int rc = dedupe(w, dev, h, seq, alive, &e);
    if (rc <= 0) return rc;
    PyObject *cdev = e->dev; /* one pointer per device in the sets */
    int64_t start, sec, bin; /* what the reference converts, in its order: it raises as it would */
    if (to_int64(py_floordiv(ts.v, BUCKET_S), &start) < 0 ||
        to_int64(py_floordiv(py_mod(heading.v + SECTOR_WIDTH / 2, 360.0), SECTOR_WIDTH), &sec) < 0 ||
        to_int64(speed.v * BIN_PER_MPS, &bin) < 0)
        return -1;
    start *= BUCKET_I;
    Bucket *b = NULL;
    for (Py_ssize_t k = w->nbuckets - 1; k >= 0; k--) { /* the newest is the usual one */
        if (w->buckets[k].start == start) {
            b = &w->buckets[k];
            break;
        }
    }
    if (b == NULL && (b = bucket_append(w, start)) == NULL) return -1;
    if (w->has_closed && start < w->closed_open && start > w->closed_key * BUCKET_I) {
        /* a late ping in a bucket the merge holds: counted there too */
        Agg *m = agg_find(w->closed, w->nclosed, sec);
        if (m == NULL && (m = agg_append(&w->closed, &w->nclosed, &w->capclosed, sec)) == NULL) return -1;
        if (agg_count(m, speed.v, cdev, h) < 0) return -1;
    }
    Agg *a = agg_find(b->secs, b->nsecs, sec);
    if (a == NULL && (a = agg_append(&b->secs, &b->nsecs, &b->capsecs, sec)) == NULL) return -1;
    if (agg_count(a, speed.v, cdev, h) < 0) return -1;
    w->added += 1;
    return 1;
}

/* -- fetching ahead ------------------------------------------------------------------------ */
/* Why: a counted ping reads a chain of cold lines (the window, its index slot, the dedupe entry;
 * the newest bucket, its sectors, a sector's histogram and device slot), each address known only
 * once the line before it arrived, so a ping waited for each miss in turn. add_pings calls these
 * for the pings a few places ahead, one stage a ping: the lines arrive while it counts the ones
 * before. They read only what is there now and never write: a wrong guess costs a prefetch. */
#define AHEAD(p) __builtin_prefetch((const void *)(p), 0, 3)
#define AHEAD_W(p) __builtin_prefetch((const void *)(p), 1, 3)

static void ahead_span(const void *p, size_t n) { /* every line of [p, p + n), up to 4 */
    const char *c = p, *end = c + (n < 256 ? n : 256);
    for (; c < end; c += 64) AHEAD_W(c);
    AHEAD_W(end - 1);
}

/* the bucket that win_add's ts goes into, if there is one */
static const Bucket *bucket_ahead(const Win *w, double ts) {
    double q = py_floordiv(ts, BUCKET_S);
    if (!(q > -1e15 && q < 1e15)) return NULL; /* not a ping's (and start would overflow) */
    int64_t start = (int64_t)q * BUCKET_I;
    for (Py_ssize_t k = w->nbuckets - 1; k >= 0; k--)
        if (w->buckets[k].start == start) return &w->buckets[k];
    return NULL;
}

void win_ahead_index(const Win *w, Py_hash_t h) {
    if (w->index != NULL) AHEAD(&w->index[(size_t)h & w->idxmask]);
    if (w->nbuckets > 0) ahead_span(&w->buckets[w->nbuckets - 1], sizeof(Bucket)); /* the usual one */
}

void win_ahead_entry(const Win *w, Py_hash_t h, double ts) {
    if (w->index != NULL) { /* the device's Seen (its first probes: the slots of one line, mostly) */
        size_t m = w->idxmask, i = (size_t)h & m;
        uint64_t tag = IDX_TAG(h);
        for (int k = 0; k < 4; k++, i = (i + 1) & m) {
            uint64_t v = w->index[i];
            if (v == IDX_EMPTY) break;
            if ((v >> 32 << 32) == tag && (Py_ssize_t)(uint32_t)v < w->nseen) {
                ahead_span(&w->seen[(uint32_t)v], sizeof(Seen));
                break;
            }
        }
    }
    const Bucket *b = bucket_ahead(w, ts);
    if (b != NULL && b->nsecs > 0) ahead_span(b->secs, (size_t)b->nsecs * sizeof(Agg));
}

void win_ahead_sector(const Win *w, Py_hash_t h, double ts, double heading) {
    const Bucket *b = bucket_ahead(w, ts);
    if (b == NULL) return;
    double q = py_floordiv(py_mod(heading + SECTOR_WIDTH / 2, 360.0), SECTOR_WIDTH);
    if (!(q > -9.2e18 && q < 9.2e18)) return;
    const Agg *a = agg_find((Agg *)b->secs, b->nsecs, (int64_t)q);
    if (a == NULL) return;
    if (a->nhist > 0) ahead_span(a->hist, (size_t)a->nhist * sizeof(HistPair));
    if (a->capdev > 0) AHEAD_W(&a->devs[(size_t)h & (size_t)(a->capdev - 1)]);
}

/* -- Python-facing methods ----------------------------------------------------------------- */
static PyObject *py_add(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Num ts, speed, heading, now;
    int64_t seq;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "add(device, seq, ts, speed, heading, now)");
        return NULL;
    }
    if (check_device(args[0]) < 0 || parse_seq(args[1], &seq) < 0 || parse_num(args[2], &ts) < 0 ||
        parse_num(args[3], &speed) < 0 || parse_num(args[4], &heading) < 0 || parse_num(args[5], &now) < 0 ||
        check_now(now) < 0)
        return NULL;
    int rc = win_add((Win *)self, args[0], seq, ts, speed, heading, now);
    if (rc < 0) return NULL;
    return PyBool_FromLong(rc);
}

static PyObject *py_accept(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Num now;
    int64_t seq;
    Seen *e;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "accept(device, seq, now)");
        return NULL;
    }
    if (check_device(args[0]) < 0 || parse_seq(args[1], &seq) < 0 || parse_num(args[2], &now) < 0) return NULL;
    Py_hash_t h = PyObject_Hash(args[0]);
    if (h == -1) return NULL;
    int rc = dedupe((Win *)self, args[0], h, seq, now, &e);
    if (rc < 0) return NULL;
    return PyBool_FromLong(rc);
}

static int cmp_bin(const void *a, const void *b) {
    int64_t x = ((const HistPair *)a)->bin, y = ((const HistPair *)b)->bin;
    return (x > y) - (x < y);
}

/* _quantiles(hist, n, (0.5, 0.85)) over pairs sorted by bin (a bin may repeat: same result) */
static void quantiles(const HistPair *h, Py_ssize_t nh, int64_t n, double out[2]) {
    static const double qs[2] = {0.5, 0.85};
    int k = 0;
    double rank = qs[0] * (double)(n - 1);
    int64_t seen = 0;
    for (Py_ssize_t i = 0; i < nh; i++) {
        seen += h[i].count;
        while ((double)seen > rank) {
            out[k++] = ((double)h[i].bin + 0.5) / BIN_PER_MPS;
            if (k == 2) return;
            rank = qs[k] * (double)(n - 1);
        }
    }
    double top = nh ? ((double)h[nh - 1].bin + 0.5) / BIN_PER_MPS : NAN;
    while (k < 2) out[k++] = top;
}

/* SectorStats of closed ``a`` and open ``b`` (either may be NULL); NULL with no error: n == 0 */
static PyObject *sector_stats(int64_t sec, const Agg *a, const Agg *b) {
    const Agg *one = a == NULL ? b : (b == NULL ? a : NULL);
    int64_t n;
    double total;
    Py_ssize_t devices, nh;
    if (one != NULL) {
        n = one->n, total = one->total, devices = one->ndev, nh = one->nhist;
    } else {
        n = a->n + b->n, total = a->total + b->total, devices = a->ndev, nh = a->nhist + b->nhist;
        for (Py_ssize_t k = 0; k < b->capdev; k++)
            if (b->devs[k].dev != NULL && !devset_has(a, b->devs[k].dev, b->devs[k].hash)) devices++;
    }
    if (n == 0) return NULL;
    const Agg *parts[2] = {one != NULL ? one : a, one != NULL ? NULL : b};
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (int p = 0; p < 2 && parts[p] != NULL; p++)
        for (Py_ssize_t k = 0; k < parts[p]->nhist; k++) {
            if (parts[p]->hist[k].bin < lo) lo = parts[p]->hist[k].bin;
            if (parts[p]->hist[k].bin > hi) hi = parts[p]->hist[k].bin;
        }
    double q[2];
    if (nh > 0 && hi - lo < 1024) { /* speeds of a road: a dense count, walked in bin order (no sort) */
        int64_t dense[1024];
        HistPair walk[1024];
        Py_ssize_t nw = 0;
        memset(dense, 0, (size_t)(hi - lo + 1) * sizeof(int64_t));
        for (int p = 0; p < 2 && parts[p] != NULL; p++)
            for (Py_ssize_t k = 0; k < parts[p]->nhist; k++) dense[parts[p]->hist[k].bin - lo] += parts[p]->hist[k].count;
        for (int64_t i = 0; i <= hi - lo; i++)
            if (dense[i]) walk[nw].bin = lo + i, walk[nw++].count = dense[i];
        quantiles(walk, nw, n, q);
    } else { /* any bins: sorted pairs (a bin may repeat: the walk gives the same) */
        HistPair *h = PyMem_Malloc((size_t)(nh ? nh : 1) * sizeof(HistPair));
        if (h == NULL) return PyErr_NoMemory();
        Py_ssize_t m = 0;
        for (int p = 0; p < 2 && parts[p] != NULL; p++) {
            memcpy(h + m, parts[p]->hist, (size_t)parts[p]->nhist * sizeof(HistPair));
            m += parts[p]->nhist;
        }
        qsort(h, (size_t)nh, sizeof(HistPair), cmp_bin);
        quantiles(h, nh, n, q);
        PyMem_Free(h);
    }
    PyObject *args[6] = {PyLong_FromLongLong(sec), PyFloat_FromDouble(total / (double)n), PyFloat_FromDouble(q[0]),
                         PyFloat_FromDouble(q[1]), PyLong_FromLongLong(n), PyLong_FromSsize_t(devices)};
    PyObject *r = NULL;
    if (args[0] && args[1] && args[2] && args[3] && args[4] && args[5]) {
        PyTypeObject *t = (PyTypeObject *)SectorStatsCls;
        if (PyType_IsSubtype(t, &PyTuple_Type)) {
            /* a NamedTuple: filled in place, as its __new__ would (a Python call saved a sector) */
            r = t->tp_alloc(t, 6);
            if (r != NULL) {
                for (int i = 0; i < 6; i++) PyTuple_SET_ITEM(r, i, args[i]);
                return r;
            }
        } else {
            r = PyObject_Vectorcall(SectorStatsCls, args, 6, NULL);
        }
    }
    for (int i = 0; i < 6; i++) Py_XDECREF(args[i]);
    return r;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static PyObject *py_stats(PyObject *self, PyObject *now_o) {
    Win *w = (Win *)self;
    Num now;
    if (parse_num(now_o, &now) < 0 || check_now(now) < 0) return NULL;
    double lo = now.v - WINDOW_S;
    int64_t open_start = (int64_t)py_floordiv(now.v, BUCKET_S) * BUCKET_I;
    int64_t key = (int64_t)py_floordiv(lo - BUCKET_S, BUCKET_S);
    if (!w->has_closed || w->closed_key != key || w->closed_open != open_start) {
        drop_closed(w);
        for (Py_ssize_t i = 0; i < w->nbuckets; i++) {
            Bucket *b = &w->buckets[i];
            if ((double)(b->start + BUCKET_I) > lo && b->start < open_start)
                for (Py_ssize_t s = 0; s < b->nsecs; s++)
                    if (agg_merge(&w->closed, &w->nclosed, &w->capclosed, &b->secs[s]) < 0) {
                        drop_closed(w);
                        return NULL;
                    }
        }
        w->has_closed = 1;
        w->closed_key = key;
        w->closed_open = open_start;
        w->merges++;
    }
    Bucket *ob = NULL;
    for (Py_ssize_t i = w->nbuckets - 1; i >= 0; i--)
        if (w->buckets[i].start == open_start) {
            ob = &w->buckets[i];
            break;
        }
    /* sectors in ascending order: the order the reference's set of small ints gives */
    int64_t secs[128];
    Py_ssize_t ns = 0;
    for (Py_ssize_t k = 0; k < w->nclosed && ns < 128; k++) secs[ns++] = w->closed[k].sec;
    if (ob != NULL)
        for (Py_ssize_t k = 0; k < ob->nsecs && ns < 128; k++)
            if (agg_find(w->closed, w->nclosed, ob->secs[k].sec) == NULL) secs[ns++] = ob->secs[k].sec;
    qsort(secs, (size_t)ns, sizeof(int64_t), cmp_i64);
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    for (Py_ssize_t k = 0; k < ns; k++) {
        const Agg *a = agg_find(w->closed, w->nclosed, secs[k]);
        const Agg *b = ob == NULL ? NULL : agg_find(ob->secs, ob->nsecs, secs[k]);
        PyObject *st = sector_stats(secs[k], a, b);
        if (st == NULL) {
            if (PyErr_Occurred()) goto fail;
            continue;
        }
        PyObject *ko = PyLong_FromLongLong(secs[k]);
        int rc = ko == NULL ? -1 : PyDict_SetItem(out, ko, st);
        Py_XDECREF(ko);
        Py_DECREF(st);
        if (rc < 0) goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* a SectorBucket (hist in bin order of arrival, devices a set) of ``a`` */
static PyObject *agg_object(const Agg *a) {
    PyObject *hist = PyDict_New(), *devs = PySet_New(NULL), *n = PyLong_FromLongLong(a->n);
    PyObject *total = PyFloat_FromDouble(a->total), *r = NULL;
    if (!hist || !devs || !n || !total) goto done;
    for (Py_ssize_t k = 0; k < a->nhist; k++) {
        PyObject *kb = PyLong_FromLongLong(a->hist[k].bin), *vc = PyLong_FromLongLong(a->hist[k].count);
        int rc = kb && vc ? PyDict_SetItem(hist, kb, vc) : -1;
        Py_XDECREF(kb);
        Py_XDECREF(vc);
        if (rc < 0) goto done;
    }
    for (Py_ssize_t k = 0; k < a->capdev; k++)
        if (a->devs[k].dev != NULL && PySet_Add(devs, a->devs[k].dev) < 0) goto done;
    PyObject *args[4] = {n, total, hist, devs};
    r = PyObject_Vectorcall(SectorBucketCls, args, 4, NULL);
done:
    Py_XDECREF(hist);
    Py_XDECREF(devs);
    Py_XDECREF(n);
    Py_XDECREF(total);
    return r;
}

/* {sec: SectorBucket} of a bucket */
static PyObject *sectors_object(const Agg *secs, Py_ssize_t n) {
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *ko = PyLong_FromLongLong(secs[k].sec), *v = agg_object(&secs[k]);
        int rc = ko && v ? PyDict_SetItem(d, ko, v) : -1;
        Py_XDECREF(ko);
        Py_XDECREF(v);
        if (rc < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

static void bucket_clear(Bucket *b) {
    aggs_free(&b->secs, &b->nsecs, &b->capsecs);
    PyMem_Free(b->fmt);
    b->fmt = NULL;
    b->capfmt = 0;
}

static PyObject *py_expire(PyObject *self, PyObject *now_o) {
    Win *w = (Win *)self;
    Num now;
    if (parse_num(now_o, &now) < 0 || check_now(now) < 0) return NULL;
    double oldest = now.v - WINDOW_S - BUCKET_S;
    PyObject *dropped = PyList_New(0);
    if (dropped == NULL) return NULL;
    Py_ssize_t keep = 0;
    for (Py_ssize_t i = 0; i < w->nbuckets; i++) {
        Bucket *b = &w->buckets[i];
        if ((double)(b->start + BUCKET_I) <= oldest) {
            PyObject *secs = sectors_object(b->secs, b->nsecs);
            PyObject *t = secs == NULL ? NULL : Py_BuildValue("(LN)", (long long)b->start, secs);
            if (t == NULL || PyList_Append(dropped, t) < 0) {
                Py_XDECREF(t);
                Py_DECREF(dropped); /* nothing dropped yet from this bucket on: the rest stays */
                memmove(&w->buckets[keep], &w->buckets[i], (size_t)(w->nbuckets - i) * sizeof(Bucket));
                w->nbuckets = keep + (w->nbuckets - i);
                return NULL;
            }
            Py_DECREF(t);
            bucket_clear(b);
        } else {
            w->buckets[keep++] = *b;
        }
    }
    w->nbuckets = keep;
    if (PyList_GET_SIZE(dropped)) drop_closed(w);
    if (now.v - w->swept_at >= SEEN_SWEEP_S) {
        w->swept_at = now.v;
        double cutoff = now.v - DEVICE_TTL_S;
        Py_ssize_t k = 0;
        for (Py_ssize_t i = 0; i < w->nseen; i++) {
            if (w->seen[i].last_seen < cutoff)
                Py_DECREF(w->seen[i].dev);
            else
                w->seen[k++] = w->seen[i];
        }
        if (k != w->nseen) {
            w->nseen = k;
            PyMem_Free(w->seen_fmt); /* the entries moved: formatted again at the next write */
            w->seen_fmt = NULL;
            w->capfmt = 0;
            if (reindex(w, slots_for(k)) < 0) {
                Py_DECREF(dropped);
                return NULL;
            }
        }
    }
    return dropped;
}

static PyObject *py_could_reach(PyObject *self, PyObject *k_o) {
    Win *w = (Win *)self;
    long long k = PyLong_AsLongLong(k_o);
    if (k == -1 && PyErr_Occurred()) return NULL;
    if (w->nseen < k) Py_RETURN_FALSE;
    int64_t secs[128], counts[128];
    int ns = 0;
    for (Py_ssize_t i = 0; i < w->nbuckets; i++) {
        Bucket *b = &w->buckets[i];
        for (Py_ssize_t s = 0; s < b->nsecs; s++) {
            int j = 0;
            while (j < ns && secs[j] != b->secs[s].sec) j++;
            if (j == ns) {
                if (ns == 128) Py_RETURN_TRUE; /* not for a 45-degree sector: a bound still */
                secs[ns] = b->secs[s].sec, counts[ns++] = 0;
            }
            counts[j] += b->secs[s].ndev;
            if (counts[j] >= k) Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

static PyObject *py_is_empty(PyObject *self, PyObject *unused) {
    Win *w = (Win *)self;
    return PyBool_FromLong(w->nbuckets == 0 && w->nseen == 0);
}

/* the reference's fields, built on the fly (tests, diagnostics; not the hot path) */
static PyObject *get_buckets(PyObject *self, void *unused) {
    Win *w = (Win *)self;
    PyObject *d = PyDict_New();
    for (Py_ssize_t i = 0; d != NULL && i < w->nbuckets; i++) {
        PyObject *ko = PyLong_FromLongLong(w->buckets[i].start);
        PyObject *v = sectors_object(w->buckets[i].secs, w->buckets[i].nsecs);
        int rc = ko && v ? PyDict_SetItem(d, ko, v) : -1;
        Py_XDECREF(ko);
        Py_XDECREF(v);
        if (rc < 0) Py_CLEAR(d);
    }
    return d;
}

/* _closed as (key, open bucket start, {sec: (n, total, hist, devices)}), or None */
static PyObject *py_closed_state(PyObject *self, PyObject *unused) {
    Win *w = (Win *)self;
    if (!w->has_closed) Py_RETURN_NONE;
    PyObject *d = PyDict_New();
    for (Py_ssize_t k = 0; d != NULL && k < w->nclosed; k++) {
        PyObject *b = agg_object(&w->closed[k]), *t = NULL, *ko = PyLong_FromLongLong(w->closed[k].sec);
        if (b != NULL && ko != NULL) {
            PyObject *n = PyObject_GetAttrString(b, "n"), *tot = PyObject_GetAttrString(b, "total");
            PyObject *h = PyObject_GetAttrString(b, "hist"), *dv = PyObject_GetAttrString(b, "devices");
            if (n && tot && h && dv) t = PyTuple_Pack(4, n, tot, h, dv);
            Py_XDECREF(n);
            Py_XDECREF(tot);
            Py_XDECREF(h);
            Py_XDECREF(dv);
        }
        if (t == NULL || PyDict_SetItem(d, ko, t) < 0) Py_CLEAR(d);
        Py_XDECREF(t);
        Py_XDECREF(ko);
        Py_XDECREF(b);
    }
    if (d == NULL) return NULL;
    return Py_BuildValue("(LLN)", (long long)w->closed_key, (long long)w->closed_open, d);
}

static PyObject *seq_window_object(const Seen *e) {
    PyObject *mask = PyLong_FromUnsignedLongLong(e->mask[3]), *sixty4 = PyLong_FromLong(64), *r = NULL;
    for (int i = 2; i >= 0 && mask != NULL; i--) {
        PyObject *sh = PyNumber_Lshift(mask, sixty4), *lo = PyLong_FromUnsignedLongLong(e->mask[i]);
        Py_SETREF(mask, sh && lo ? PyNumber_Or(sh, lo) : NULL);
        Py_XDECREF(sh);
        Py_XDECREF(lo);
    }
    PyObject *hwm = PyLong_FromLongLong(e->hwm);
    PyObject *last = e->last_int ? PyLong_FromLongLong((long long)e->last_seen) : PyFloat_FromDouble(e->last_seen);
    if (mask && hwm && last) {
        PyObject *args[3] = {hwm, mask, last};
        r = PyObject_Vectorcall(SeqWindowCls, args, 3, NULL);
    }
    Py_XDECREF(mask);
    Py_XDECREF(sixty4);
    Py_XDECREF(hwm);
    Py_XDECREF(last);
    return r;
}

/* -- ``seen``: a live read-only view of the dedupe (len() is what the pacing asks) ------------ */
typedef struct {
    PyObject_HEAD
    Win *win;
} SeenView;

static PyObject *get_seen(PyObject *self, void *unused) {
    SeenView *v = PyObject_New(SeenView, SeenViewType);
    if (v == NULL) return NULL;
    v->win = (Win *)Py_NewRef(self);
    return (PyObject *)v;
}

static void seenview_dealloc(PyObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    Py_DECREF(((SeenView *)self)->win);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static Py_ssize_t seenview_len(PyObject *self) { return ((SeenView *)self)->win->nseen; }

static Py_ssize_t seenview_find(PyObject *self, PyObject *key) {
    if (!PyUnicode_CheckExact(key)) return -1;
    Py_hash_t h = PyObject_Hash(key);
    if (h == -1) return -2;
    return seen_lookup(((SeenView *)self)->win, key, h);
}

static int seenview_contains(PyObject *self, PyObject *key) {
    Py_ssize_t ix = seenview_find(self, key);
    return ix == -2 ? -1 : ix >= 0;
}

static PyObject *seenview_getitem(PyObject *self, PyObject *key) {
    Py_ssize_t ix = seenview_find(self, key);
    if (ix == -2) return NULL;
    if (ix < 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return seq_window_object(&((SeenView *)self)->win->seen[ix]);
}

static PyObject *seenview_iter(PyObject *self) {
    Win *w = ((SeenView *)self)->win;
    PyObject *l = PyList_New(w->nseen);
    if (l == NULL) return NULL;
    for (Py_ssize_t i = 0; i < w->nseen; i++) PyList_SET_ITEM(l, i, Py_NewRef(w->seen[i].dev));
    PyObject *it = PyObject_GetIter(l);
    Py_DECREF(l);
    return it;
}

static PyType_Slot seenview_slots[] = {
    {Py_tp_dealloc, seenview_dealloc},
    {Py_mp_length, seenview_len},
    {Py_sq_length, seenview_len},
    {Py_mp_subscript, seenview_getitem},
    {Py_sq_contains, seenview_contains},
    {Py_tp_iter, seenview_iter},
    {Py_tp_doc, "The devices a window dedupes (live, read-only): len, in, iteration, [device] -> SeqWindow."},
    {0, NULL},
};

static PyType_Spec seenview_spec = {"pipeline._window.SeenView", sizeof(SeenView), 0, Py_TPFLAGS_DEFAULT,
                                    seenview_slots};

/* -- the type ------------------------------------------------------------------------------ */
static PyObject *win_new(PyTypeObject *tp, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "CellSpeedWindow() takes no arguments (from_bytes restores one)");
        return NULL;
    }
    return tp->tp_alloc(tp, 0); /* zeroed: empty */
}

static void win_dealloc(PyObject *self) {
    Win *w = (Win *)self;
    PyTypeObject *tp = Py_TYPE(self);
    for (Py_ssize_t i = 0; i < w->nseen; i++) Py_DECREF(w->seen[i].dev);
    PyMem_Free(w->seen);
    PyMem_Free(w->seen_fmt);
    PyMem_Free(w->index);
    for (Py_ssize_t i = 0; i < w->nbuckets; i++) bucket_clear(&w->buckets[i]);
    PyMem_Free(w->buckets);
    aggs_free(&w->closed, &w->nclosed, &w->capclosed);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef win_methods[] = {
    {"add", (PyCFunction)(void (*)(void))py_add, METH_FASTCALL,
     "add(device, seq, ts, speed, heading, now) -> bool: count one ping; False for a duplicate or a ping "
     "whose window is over."},
    {"accept", (PyCFunction)(void (*)(void))py_accept, METH_FASTCALL,
     "accept(device, seq, now) -> bool: record (device, seq); False if it was counted here already."},
    {"stats", py_stats, METH_O, "stats(now) -> {sector: SectorStats} over the window ending at now."},
    {"expire", py_expire, METH_O,
     "expire(now) -> [(start, {sector: SectorBucket})]: drop buckets and dedupe entries that can no longer "
     "matter; returns the dropped buckets."},
    {"could_reach", py_could_reach, METH_O, "could_reach(k) -> bool: whether some sector may have k devices."},
    {"is_empty", py_is_empty, METH_NOARGS, NULL},
    {"to_bytes", win_to_bytes, METH_NOARGS, "The reference's compact JSON, byte for byte."},
    {"from_bytes", win_from_bytes, METH_O | METH_CLASS, "A window from to_bytes()."},
    {"_closed_state", py_closed_state, METH_NOARGS, "The merge of the closed buckets (tests)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef win_members[] = {
    {"added", T_LONGLONG, offsetof(Win, added), 0, "pings counted by this copy (not persisted)"},
    {"wake_at", T_LONGLONG, offsetof(Win, wake_at), 0, "the added count the pacing wants to hear of again"},
    {"merges", T_LONGLONG, offsetof(Win, merges), READONLY, "how often a reading merged the closed buckets"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef win_getset[] = {
    {"seen", get_seen, NULL, "the per-device dedupe, a live read-only view", NULL},
    {"buckets", get_buckets, NULL, "{start: {sector: SectorBucket}}, a copy (tests, diagnostics)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot win_slots[] = {
    {Py_tp_new, win_new},
    {Py_tp_dealloc, win_dealloc},
    {Py_tp_methods, win_methods},
    {Py_tp_members, win_members},
    {Py_tp_getset, win_getset},
    {Py_tp_doc, "Event-time speed window of one cell, with the per-device dedupe state (native)."},
    {0, NULL},
};

/* a heap type: mutable like a Python class (tests monkeypatch ``stats``) */
static PyType_Spec win_spec = {"pipeline._window.CellSpeedWindow", sizeof(Win), 0, Py_TPFLAGS_DEFAULT, win_slots};

int speedwin_init(PyObject *module) {
    WinType = (PyTypeObject *)PyType_FromSpec(&win_spec);
    if (WinType == NULL) return -1;
    SeenViewType = (PyTypeObject *)PyType_FromSpec(&seenview_spec);
    if (SeenViewType == NULL) return -1;
    if (PyModule_AddObjectRef(module, "CellSpeedWindow", (PyObject *)WinType) < 0) return -1;
    return PyModule_AddObjectRef(module, "SeenView", (PyObject *)SeenViewType);
}
