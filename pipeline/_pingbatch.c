/* pipeline._records.PingBatch: a ping record read straight into C structs (the layout: _pingbatch.h).
 *
 * ``pings.decode_record`` builds a dict and seven float objects per ping (orjson), checks them
 * and adds the cell (``check_pings``); the engine's C parts (``_window.add_pings``,
 * ``_movers.Store.glide``) then read the values back out of the dicts, and the dicts are freed.
 * That is ~2.5 µs a ping of the worker's ~8.5. ``parse_batch`` reads the record's bytes once
 * into an array of ``PBPing`` (numbers as doubles, whether each was an integer literal, the
 * state as a code, the device id and the res cell as the same interned str objects
 * ``check_pings`` gives), and the C consumers read the structs. A ping becomes a dict only
 * when Python asks for it (``batch[i]``, cached: ``batch[i] is batch[i]``): the few pings the
 * engine's Python loop handles.
 *
 * The fast path only ever *accepts*, and only the restricted JSON our ingest writes
 * (``pipeline.ingest.wire.encode_record``: fragments from ``_fastpings``, or orjson's
 * ``pings.encode_record``): ``{"v":1,"cell":"…","ingest_ts":<num>,"pings":[{…},…]}`` with the
 * top keys in any order, each once; a ping's keys ``device_id, seq, ts, lat, lon, speed_mps,
 * heading_deg, accuracy_m`` and optional ``state`` (one of the three) in any order, each once;
 * strings ASCII without escapes; JSON whitespace between tokens. Anything else — an escape,
 * non-ASCII, an unknown or duplicate key, null, a bool, a nested value, a missing field, an
 * integer literal of 2**53 or more (or a non-integer seq), a number this parser cannot round
 * exactly, a value ``check_pings`` refuses, trailing bytes — returns None, and
 * ``pings.decode_batch`` takes the reference path (orjson + ``check_pings``), which names the
 * error or gives the dicts. So a batch is always what the reference path would give:
 *
 * - the dict of ping i has the JSON's keys in the JSON's order, then "cell"; an integer literal
 *   is a Python int (its double is exact below 2**53, which is why larger ones go the other
 *   way), any other number the float orjson parses (correctly rounded: Clinger's exact fast
 *   path, or one long double division proven away from a rounding midpoint, else refused);
 * - the checks are ``check_pings``' exactly: seq an int, the others numbers, lat, lon, speed
 *   and heading in range (heading 360 included; ts and accuracy_m unchecked).
 *
 * ``sorted_by_ts()`` is Python's ``sorted(batch, key=itemgetter("ts"))``: stable, by the
 * exact value (ints and floats below 2**53 compare as their doubles).
 *
 * Consumers in other extension modules (``_window``, ``_movers``) include _pingbatch.h, find the
 * type at their import (``pingbatch_import``) and compare ``Py_TYPE``. The per-ping Python work
 * left after parsing is kept off the usual ping too: a device id is found by its bytes in a table
 * holding the device cache's str and the device's last cell, which is the hint a point-in-cell
 * test confirms instead of calling H3 (below, ``device_slot`` and ``intern_all``).
 *
 * A batch holds only str references (and the dicts it made, which hold ints, floats and strs),
 * so it takes no part in the cyclic GC.
 */
#define PINGBATCH_OWNER /* the type is this file's */
#include "_pingbatch.h"
#include "_jsonread.h"
#include <float.h>
#include <math.h>
#include <string.h>

#define HIDDEN __attribute__((visibility("hidden")))
HIDDEN PyObject *records_cell_str(uint64_t h);
HIDDEN PyObject *records_device(PyObject *dev);
HIDDEN int pingbatch_add(PyObject *module);
HIDDEN void pingbatch_forget(int devices);
HIDDEN uint64_t cell_hinted(double lat, double lon, int res, uint64_t hint); /* ingest/_h3skip.c */
HIDDEN int h3skip_init(void);
HIDDEN PyObject *cell_stats(PyObject *self, PyObject *args); /* ingest/_h3skip.c */

#define EXACT_MAX (UINT64_C(1) << 53)
#define MAX_SPEED 90.0

static PyObject *key_names[PB_NKEYS], *k_cell, *state_names[4];
static PyTypeObject BatchType;

/* -- the parser ------------------------------------------------------------------------------ */


/* Which ping key (-1: none): by its length, then one comparison of known length. */
static inline int key_of(const char *k, Py_ssize_t n) {
#define IS(text) (memcmp(k, text, sizeof(text) - 1) == 0)
    switch (n) {
    case 2: return IS("ts") ? PB_TS : -1;
    case 3: return IS("lat") ? PB_LAT : IS("lon") ? PB_LON : IS("seq") ? PB_SEQ : -1;
    case 5: return IS("state") ? PB_STATE : -1;
    case 9: return IS("device_id") ? PB_DEVICE : IS("speed_mps") ? PB_SPEED : -1;
    case 10: return IS("accuracy_m") ? PB_ACC : -1;
    case 11: return IS("heading_deg") ? PB_HEADING : -1;
    default: return -1;
    }
#undef IS
}


/* A JSON number at the cursor, exactly as orjson reads it: 1 with its double (*integer: it was an
 * integer literal, whose value *iv is below 2**53 in magnitude, the double exact and -0 read as
 * 0); 0 when it is not a JSON number or this parser cannot give orjson's value for sure. */
static int number(Cursor *c, double *value, int *integer, int64_t *iv) {
    JsonNum n;
    if (!json_number_scan(c->p, c->end, &n)) return 0;
    *integer = n.integer;
    if (n.integer) {
        if (n.dropped || n.m >= EXACT_MAX) return 0; /* a Python int the structs cannot hold exactly */
        *iv = n.neg ? -(int64_t)n.m : (int64_t)n.m;
        *value = (double)*iv; /* "-0" is the int 0: +0.0, as float(0) */
    } else if (!json_double_fast(&n, value)) {
        return 0;
    }
    c->p = n.end;
    return 1;
}

typedef struct {
    const char *dev; /* the device id's text in the record */
    Py_ssize_t dev_n;
} DevText;

static const char *const STATE_TEXT[] = {NULL, "driving", "stopped", "parked"};

/* One ping object (the cursor before its '{') into *out: 1 taken (numbers and checks only; its
 * strs come later), 0 not (the reference path decides). */
static int ping(Cursor *c, PBPing *out, DevText *dt) {
    if (!eat(c, '{')) return 0;
    unsigned seen = 0, ints = 0, nkeys = 0;
    uint64_t order = 0;
    double v[PB_NKEYS];
    out->state = PB_NO_STATE;
    for (;;) {
        const char *k;
        Py_ssize_t kn;
        skip_ws(c);
        if (!plain_string(c, &k, &kn) || !eat(c, ':')) return 0;
        int f = key_of(k, kn);
        if (f < 0 || (seen & (1u << f))) return 0; /* unknown or duplicate key */
        seen |= 1u << f;
        order |= (uint64_t)f << (4 * nkeys++);
        skip_ws(c);
        if (f == PB_DEVICE) {
            if (!plain_string(c, &dt->dev, &dt->dev_n)) return 0;
        } else if (f == PB_STATE) {
            const char *s;
            Py_ssize_t sn;
            if (!plain_string(c, &s, &sn)) return 0; /* null: the dict keeps None, the reference path */
            for (int i = PB_DRIVING; i <= PB_PARKED; i++)
                if ((size_t)sn == strlen(STATE_TEXT[i]) && memcmp(s, STATE_TEXT[i], (size_t)sn) == 0)
                    out->state = (uint8_t)i;
            if (out->state == PB_NO_STATE) return 0;
        } else {
            int integer;
            int64_t iv;
            if (!number(c, &v[f], &integer, &iv)) return 0;
            if (f == PB_SEQ) {
                if (!integer) return 0; /* check_pings: seq must be an int */
                out->seq = iv;
            }
            if (integer) ints |= 1u << f;
        }
        if (eat(c, ',')) continue;
        if (eat(c, '}')) break;
        return 0;
    }
    const unsigned need = (1u << PB_STATE) - 1; /* every key but state */
    if ((seen & need) != need) return 0;
    /* check_pings' ranges: ts and accuracy_m are not checked there */
    if (!(-90.0 <= v[PB_LAT] && v[PB_LAT] <= 90.0 && -180.0 <= v[PB_LON] && v[PB_LON] <= 180.0 &&
          0.0 <= v[PB_SPEED] && v[PB_SPEED] <= MAX_SPEED && 0.0 <= v[PB_HEADING] && v[PB_HEADING] <= 360.0))
        return 0;
    out->ts = v[PB_TS];
    out->lat = v[PB_LAT];
    out->lon = v[PB_LON];
    out->speed = v[PB_SPEED];
    out->heading = v[PB_HEADING];
    out->acc = v[PB_ACC];
    out->ints = (uint16_t)ints;
    out->order = order;
    out->nkeys = (uint8_t)nkeys;
    out->dev = NULL;
    out->cell = NULL;
    return 1;
}

typedef struct {
    PBPing *p;
    DevText *dt;
    Py_ssize_t n, cap;
} Parsed;

static int grow(Parsed *ps) {
    Py_ssize_t cap = ps->cap ? ps->cap * 2 : 64;
    PBPing *p = PyMem_Realloc(ps->p, (size_t)cap * sizeof(PBPing));
    if (p == NULL) return -1;
    ps->p = p;
    DevText *dt = PyMem_Realloc(ps->dt, (size_t)cap * sizeof(DevText));
    if (dt == NULL) return -1;
    ps->dt = dt;
    ps->cap = cap;
    return 0;
}

/* The "pings" array (the cursor before its '['): 1 taken, 0 not, -1 out of memory. */
static int ping_array(Cursor *c, Parsed *ps) {
    if (!eat(c, '[')) return 0;
    for (;;) {
        if (ps->n == ps->cap && grow(ps) < 0) return -1;
        if (!ping(c, &ps->p[ps->n], &ps->dt[ps->n])) return 0;
        ps->n++;
        if (eat(c, ',')) continue;
        if (eat(c, ']')) return 1;
        return 0;
    }
}

enum { T_V = 1, T_CELL = 2, T_INGEST = 4, T_PINGS = 8 };

/* The record's top level: 1 taken (pings parsed, *cell and *ingest_ts set), 0 not, -1 no memory. */
static int record(Cursor *c, Parsed *ps, const char **cell, Py_ssize_t *cell_n, double *ingest_ts) {
    unsigned seen = 0;
    if (!eat(c, '{')) return 0;
    for (;;) {
        const char *k;
        Py_ssize_t kn;
        int t, rc;
        skip_ws(c);
        if (!plain_string(c, &k, &kn) || !eat(c, ':')) return 0;
        if (kn == 1 && k[0] == 'v') t = T_V;
        else if (kn == 4 && memcmp(k, "cell", 4) == 0) t = T_CELL;
        else if (kn == 9 && memcmp(k, "ingest_ts", 9) == 0) t = T_INGEST;
        else if (kn == 5 && memcmp(k, "pings", 5) == 0) t = T_PINGS;
        else return 0;
        if (seen & (unsigned)t) return 0;
        seen |= (unsigned)t;
        skip_ws(c);
        double d;
        int integer;
        int64_t iv;
        switch (t) {
        case T_V:
            if (!number(c, &d, &integer, &iv) || !integer || iv != 1) return 0;
            break;
        case T_CELL:
            if (!plain_string(c, cell, cell_n)) return 0;
            break;
        case T_INGEST:
            if (!number(c, ingest_ts, &integer, &iv)) return 0;
            break;
        default:
            rc = ping_array(c, ps);
            if (rc <= 0) return rc;
        }
        if (eat(c, ',')) continue;
        if (eat(c, '}')) break;
        return 0;
    }
    skip_ws(c);
    return seen == (T_V | T_CELL | T_INGEST | T_PINGS) && c->p == c->end && ps->n > 0;
}

/* -- the type -------------------------------------------------------------------------------- */

static void release(PBPing *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(p[i].dev);
        Py_XDECREF(p[i].cell);
    }
}

static void Batch_dealloc(PingBatch *b) {
    if (b->p != NULL) release(b->p, b->n);
    if (b->dicts != NULL) {
        for (Py_ssize_t i = 0; i < b->n; i++) Py_XDECREF(b->dicts[i]);
        PyMem_Free(b->dicts);
    }
    PyMem_Free(b->p);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

/* A new batch owning p[0..n) (and their references). */
static PyObject *new_batch(PBPing *p, Py_ssize_t n) {
    PingBatch *b = PyObject_New(PingBatch, &BatchType);
    if (b == NULL) {
        release(p, n);
        PyMem_Free(p);
        return NULL;
    }
    b->n = n;
    b->p = p;
    b->dicts = NULL;
    return (PyObject *)b;
}

static PyObject *box(double v, int is_int) { return is_int ? PyLong_FromLongLong((long long)v) : PyFloat_FromDouble(v); }

/* Ping p as the reference path's dict: its keys in the record's order, then "cell". */
static PyObject *make_dict(const PBPing *p) {
    PyObject *d = _PyDict_NewPresized(p->nkeys + 1);
    if (d == NULL) return NULL;
    for (int i = 0; i < p->nkeys; i++) {
        int k = (int)((p->order >> (4 * i)) & 15);
        int is_int = (p->ints >> k) & 1;
        PyObject *v;
        switch (k) {
        case PB_DEVICE: v = Py_NewRef(p->dev); break;
        case PB_SEQ: v = PyLong_FromLongLong(p->seq); break;
        case PB_TS: v = box(p->ts, is_int); break;
        case PB_LAT: v = box(p->lat, is_int); break;
        case PB_LON: v = box(p->lon, is_int); break;
        case PB_SPEED: v = box(p->speed, is_int); break;
        case PB_HEADING: v = box(p->heading, is_int); break;
        case PB_ACC: v = box(p->acc, is_int); break;
        default: v = Py_NewRef(state_names[p->state]); break;
        }
        if (v == NULL || PyDict_SetItem(d, key_names[k], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    if (PyDict_SetItem(d, k_cell, p->cell) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static Py_ssize_t Batch_len(PingBatch *b) { return b->n; }

static PyObject *Batch_item(PingBatch *b, Py_ssize_t i) {
    if (i < 0 || i >= b->n) {
        PyErr_SetString(PyExc_IndexError, "PingBatch index out of range");
        return NULL;
    }
    if (b->dicts == NULL) {
        b->dicts = PyMem_Calloc((size_t)b->n, sizeof(PyObject *));
        if (b->dicts == NULL) return PyErr_NoMemory();
    }
    if (b->dicts[i] == NULL) {
        b->dicts[i] = make_dict(&b->p[i]);
        if (b->dicts[i] == NULL) return NULL;
    }
    return Py_NewRef(b->dicts[i]);
}

typedef struct {
    double ts;
    Py_ssize_t i;
} SortKey;

/* by ts, then by position: a stable order */
static int by_ts(const void *a, const void *b) {
    const SortKey *x = a, *y = b;
    if (x->ts < y->ts) return -1;
    if (x->ts > y->ts) return 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* sorted_by_ts() -> PingBatch: sorted(batch, key=itemgetter("ts")); the batch itself if in order */
static PyObject *Batch_sorted(PingBatch *b, PyObject *Py_UNUSED(ignored)) {
    Py_ssize_t n = b->n, i;
    for (i = 1; i < n && !(b->p[i].ts < b->p[i - 1].ts); i++) {
    }
    if (i >= n) return Py_NewRef((PyObject *)b);
    SortKey *keys = PyMem_Malloc((size_t)n * sizeof(SortKey));
    PBPing *p = PyMem_Malloc((size_t)n * sizeof(PBPing));
    if (keys == NULL || p == NULL) {
        PyMem_Free(keys);
        PyMem_Free(p);
        return PyErr_NoMemory();
    }
    for (i = 0; i < n; i++) keys[i] = (SortKey){b->p[i].ts, i};
    qsort(keys, (size_t)n, sizeof(SortKey), by_ts);
    for (i = 0; i < n; i++) {
        p[i] = b->p[keys[i].i];
        Py_INCREF(p[i].dev);
        Py_INCREF(p[i].cell);
    }
    PyMem_Free(keys);
    return new_batch(p, n);
}

static PyObject *Batch_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyErr_SetString(PyExc_TypeError, "PingBatch comes from pings.decode_batch");
    return NULL;
}

static PyMethodDef Batch_methods[] = {
    {"sorted_by_ts", (PyCFunction)Batch_sorted, METH_NOARGS,
     "The pings in sorted(batch, key=itemgetter(\"ts\")) order (stable): a batch, this one if in order."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Batch_seq = {
    .sq_length = (lenfunc)Batch_len,
    .sq_item = (ssizeargfunc)Batch_item,
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pipeline._records.PingBatch",
    .tp_basicsize = sizeof(PingBatch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A decoded ping record as C structs; batch[i] is ping i's dict, made when asked for.",
    .tp_new = Batch_new,
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_methods = Batch_methods,
    .tp_as_sequence = &Batch_seq,
};

/* -- decode ---------------------------------------------------------------------------------- */

/* A device id's canonical str, looked up by the record's bytes, and the cell of its last ping.
 *
 * Going through the device cache costs a str made, hashed and freed a ping; H3 ~0.6 µs. This
 * open-addressing table (linear probing, never a removal: it only grows, and is emptied whole)
 * gives the cache's str without making one, and the device's previous cell as the hint of
 * ``cell_hinted`` (pipeline/ingest/_h3skip.c: a phone a few seconds from its last ping is mostly
 * still in its res-9 cell, confirmed by a point-in-cell test, else H3). A slot holds strong
 * references; the table is emptied when _records.c clears the cache it mirrors (at CACHE_MAX
 * devices, so it stays below 2 * CACHE_MAX slots), and so its str is always the cache's. */
typedef struct {
    uint64_t hash;  /* of the id's bytes; 0: empty */
    PyObject *dev;  /* owned: the device cache's str for the id */
    PyObject *cell; /* owned: the str of h3 (NULL: none yet) */
    uint64_t h3;
} DevSlot;

static DevSlot *dev_slots = NULL;
static size_t dev_mask = 0, dev_used = 0;
static int dev_shift = 64;

static int dev_alloc(size_t cap) {
    DevSlot *t = PyMem_RawCalloc(cap, sizeof(DevSlot));
    if (t == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    dev_slots = t;
    dev_mask = cap - 1;
    int bits = 0;
    while (((size_t)1 << bits) < cap) bits++;
    dev_shift = 64 - bits;
    return 0;
}

static inline size_t dev_home(uint64_t h) { return (size_t)((h * 0x9E3779B97F4A7C15ull) >> dev_shift); }

/* _records.c empties the table's cells when it clears its cell cache, all of it with its device cache */
void pingbatch_forget(int devices) {
    if (dev_slots == NULL) return;
    for (size_t i = 0; i <= dev_mask; i++) {
        DevSlot *e = &dev_slots[i];
        Py_CLEAR(e->cell);
        e->h3 = 0;
        if (devices) {
            Py_CLEAR(e->dev);
            e->hash = 0;
        }
    }
    if (devices) dev_used = 0;
}

static int dev_grow(void) {
    DevSlot *old = dev_slots;
    size_t cap = dev_mask + 1;
    if (dev_alloc(cap * 2) < 0) return -1;
    for (size_t i = 0; i < cap; i++) {
        if (old[i].hash == 0) continue;
        size_t j = dev_home(old[i].hash);
        while (dev_slots[j].hash != 0) j = (j + 1) & dev_mask;
        dev_slots[j] = old[i];
    }
    PyMem_RawFree(old);
    return 0;
}

static inline uint64_t hash_bytes(const char *s, Py_ssize_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h ? h : 1;
}

/* The slot of the device id s[0..n) (ASCII), holding its canonical str; NULL on error. */
static DevSlot *device_slot(const char *s, Py_ssize_t n) {
    uint64_t h = hash_bytes(s, n);
    size_t i = dev_home(h);
    for (DevSlot *e = &dev_slots[i]; e->hash != 0; e = &dev_slots[i = (i + 1) & dev_mask])
        if (e->hash == h && PyUnicode_GET_LENGTH(e->dev) == n && memcmp(PyUnicode_DATA(e->dev), s, (size_t)n) == 0)
            return e; /* the canonical str of an ASCII id is compact ASCII: its data is these bytes */
    PyObject *str = PyUnicode_New(n, 127);
    if (str == NULL) return NULL;
    memcpy(PyUnicode_1BYTE_DATA(str), s, (size_t)n);
    PyObject *canon = records_device(str); /* may clear the cache, and so the table */
    Py_DECREF(str);
    if (canon == NULL) return NULL;
    if ((dev_used + 1) * 2 > dev_mask + 1 && dev_grow() < 0) {
        Py_DECREF(canon);
        return NULL;
    }
    i = dev_home(h);
    while (dev_slots[i].hash != 0) i = (i + 1) & dev_mask;
    DevSlot *e = &dev_slots[i];
    e->hash = h;
    e->dev = canon;
    e->cell = NULL;
    e->h3 = 0;
    dev_used++;
    return e;
}

/* The parsed pings' strs and cells: the device ids as the device cache's strs, the cells by H3
 * (hinted with the device's last cell) as the cell cache's strs. 0, or -1 with a Python error
 * (the references taken so far released by the caller). */
static int intern_all(Parsed *ps, int res) {
    for (Py_ssize_t i = 0; i < ps->n; i++) {
        PBPing *p = &ps->p[i];
        DevSlot *e = device_slot(ps->dt[i].dev, ps->dt[i].dev_n);
        if (e == NULL) return -1;
        p->dev = Py_NewRef(e->dev);
        uint64_t h = cell_hinted(p->lat, p->lon, res, e->h3);
        if (h == 1 && PyErr_Occurred()) return -1;
        p->h3 = h;
        if (h == e->h3 && e->cell != NULL) {
            p->cell = Py_NewRef(e->cell);
            continue;
        }
        p->cell = records_cell_str(h); /* may clear the cell cache, and the table's cells */
        if (p->cell == NULL) return -1;
        if (e->dev == p->dev) { /* still the slot of this device (the table was not emptied) */
            Py_XSETREF(e->cell, Py_NewRef(p->cell));
            e->h3 = h;
        }
    }
    return 0;
}

/* parse_batch(raw, cell_res) -> (cell, ingest_ts, PingBatch) | None: None when the reference
 * path (pings.decode_record) must decide. */
static PyObject *parse_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "parse_batch(raw, cell_res)");
        return NULL;
    }
    long res = PyLong_AsLong(args[1]);
    if (res == -1 && PyErr_Occurred()) return NULL;
    if (res < 0 || res > 15) {
        PyErr_SetString(PyExc_ValueError, "parse_batch: cell_res must be 0..15");
        return NULL;
    }
    if (!PyBytes_CheckExact(args[0])) Py_RETURN_NONE;
    Cursor c = {PyBytes_AS_STRING(args[0]), PyBytes_AS_STRING(args[0]) + PyBytes_GET_SIZE(args[0])};
    Parsed ps = {NULL, NULL, 0, 0};
    const char *cell = NULL;
    Py_ssize_t cell_n = 0;
    double ingest_ts = 0.0;
    PyObject *result = NULL;
    int rc = record(&c, &ps, &cell, &cell_n, &ingest_ts);
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (rc == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (intern_all(&ps, (int)res) < 0) {
        release(ps.p, ps.n);
        goto done;
    }
    PyObject *batch = new_batch(ps.p, ps.n);
    ps.p = NULL; /* the batch owns it, or new_batch freed it */
    if (batch == NULL) goto done;
    result = Py_BuildValue("(s#dN)", cell, cell_n, ingest_ts, batch);
done:
    PyMem_Free(ps.p);
    PyMem_Free(ps.dt);
    return result;
}

static PyMethodDef functions[] = {
    {"parse_batch", (PyCFunction)(void (*)(void))parse_batch, METH_FASTCALL,
     "parse_batch(raw, cell_res) -> (cell, ingest_ts, PingBatch) or None (the reference path decides)."},
    {"cell_stats", cell_stats, METH_NOARGS,
     "cell_stats() -> (cells confirmed from the device's last cell, cells by H3, cell shapes made) by parse_batch"},
    {NULL, NULL, 0, NULL},
};

/* The type and parse_batch into module _records (its init calls this). */
int pingbatch_add(PyObject *module) {
    static const char *const names[PB_NKEYS] = {"device_id", "seq", "ts", "lat", "lon",
                                                "speed_mps", "heading_deg", "accuracy_m", "state"};
    for (int i = 0; i < PB_NKEYS; i++)
        if ((key_names[i] = PyUnicode_InternFromString(names[i])) == NULL) return -1;
    if ((k_cell = PyUnicode_InternFromString("cell")) == NULL) return -1;
    state_names[PB_NO_STATE] = Py_NewRef(Py_None);
    for (int i = PB_DRIVING; i <= PB_PARKED; i++)
        if ((state_names[i] = PyUnicode_InternFromString(STATE_TEXT[i])) == NULL) return -1;
    if (h3skip_init() < 0) return -1;
    if (dev_alloc(4096) < 0) return -1;
    if (PyType_Ready(&BatchType) < 0) return -1;
    if (PyModule_AddObjectRef(module, "PingBatch", (PyObject *)&BatchType) < 0) return -1;
    return PyModule_AddFunctions(module, functions);
}
