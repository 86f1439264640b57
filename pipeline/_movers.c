/* pipeline._movers: devices that are simply moving on, kept as plain C structs.
 *
 * Most pings (~85 %) are the next ping of a tracked device that moves, with no stop, stall
 * or brake: ``motion.glide`` overwrites ~6 fields of its ``MotionTracker``. In Python that
 * touches a dict entry, a ``StallState``, a ``MotionTracker`` and the previous ping's float
 * objects (freed, cold) per ping: the worker is memory-bound, and the same glide in C on the
 * same objects gained nothing. Here such a device is one inline struct in an open-addressing
 * table (hot fields in one 128-byte block), keyed by (device id, res-7 key): a glide reads
 * the ping dict's values (or a PingBatch's structs, pipeline/_pingbatch.h) and writes
 * doubles, creating no Python object.
 *
 * Semantics are exactly ``motion.glide`` (refusals and updates), numbers included: each
 * numeric field keeps whether it was an int (ints below 2**53 only, so the double is
 * exact; an int-int difference that would not be exact is refused), optional fields keep
 * None as a flag. Whatever the fast path does not take goes back to Python: the engine
 * takes the device out (``take``: a ``StallState`` with bit-equal fields) and steps it.
 * tests/unit/test_movers.py holds the native engine equal to the pure-Python one.
 *
 * Only exact ``str`` references are held (device, key, table key), so the store needs no
 * GC support: it can take part in no reference cycle.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_pingbatch.h"

#define EXACT_MAX 9007199254740992.0 /* 2**53 */

static PyObject *MotionTracker = NULL, *StallState = NULL;

/* Spots.see on by_cell[cell] (pipeline/_spots.c's see_cell, from its capsule pipeline._spots.see_c):
 * 0, or -1 with an exception. glide calls it for a watched cell's ping, as the engine's loop would. */
typedef int (*SeeCell)(PyObject *by_cell, PyObject *cell, PyObject *device, double ts, double lat, double lon,
                       double speed, double heading);
static SeeCell see_cell = NULL;
static double STILL_MPS, GAP_S, MAX_BRAKE_DT_S, HARD_BRAKE_MPS2, TTL_S;
static PyObject *k_cell, *k_device_id, *k_seq, *k_ts, *k_lat, *k_lon, *k_speed, *k_heading;
static PyObject *a_motion, *a_stall, *a_alerted, *a_parked, *a_device, *a_seq, *a_ts, *a_lat, *a_lon, *a_speed,
    *a_heading, *a_seen_at, *a_still_since, *a_still_lat, *a_still_lon, *a_still_n, *a_told_at, *a_brake_ts,
    *a_brake_decel;

/* numeric fields: bit i of `ints` says the value was a Python int */
enum { F_TS, F_LAT, F_LON, F_SPEED, F_HEADING, F_SEEN, F_STILL_SINCE, F_STILL_LAT, F_STILL_LON, F_TOLD,
       F_BRAKE_TS, F_BRAKE_DECEL, F_ALERTED, F_PARKED };
/* optional fields: bit set = None */
enum { N_STILL_SINCE = 1, N_TOLD = 2, N_BRAKE_TS = 4, N_ALERTED = 8, N_PARKED = 16 };
#define GLIDE_INTS ((1u << F_TS) | (1u << F_LAT) | (1u << F_LON) | (1u << F_SPEED) | (1u << F_HEADING) | (1u << F_SEEN))

typedef struct { /* what a glide reads and writes, plus what fits: 128 bytes, one aligned pair of lines */
    uint64_t hash;     /* 0: empty slot */
    PyObject *dev;     /* the device id (owned); NULL: empty */
    PyObject *key;     /* its res-7 key (owned) */
    double ts, speed, lat, lon, heading, seen_at;
    int64_t seq;
    uint16_t ints;
    uint8_t nones;
    uint8_t _pad;
    int32_t partition;
    PyObject *dkey;    /* "<key>|<device>", the devices table's key (owned) */
    PyObject *mdev;    /* MotionTracker.device (owned) */
    double still_since, still_lat, still_lon;
} Hot;
_Static_assert(sizeof(Hot) == 128, "Hot is one aligned pair of cache lines");

typedef struct {
    double told_at, brake_ts, brake_decel, alerted_since, parked_since;
    int64_t still_n;
} Cold;

typedef struct {
    PyObject_HEAD
    Hot *hot;
    Cold *cold;
    size_t mask; /* capacity - 1 (a power of two) */
    int shift;   /* 64 - log2(capacity) */
    Py_ssize_t used;
} Store;

static inline size_t slot_of(const Store *s, uint64_t h) { return (size_t)((h * 0x9E3779B97F4A7C15ull) >> s->shift); }

static inline uint64_t combine(Py_hash_t hd, Py_hash_t hk) {
    uint64_t h = ((uint64_t)hd * 0xC2B2AE3D27D4EB4Full) ^ (uint64_t)hk;
    h ^= h >> 29;
    return h ? h : 1;
}

static int str_eq(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    return PyUnicode_GET_LENGTH(a) == PyUnicode_GET_LENGTH(b) && PyUnicode_Compare(a, b) == 0;
}

/* The slot holding (dev, key), or the empty slot where it would go. */
static size_t find(const Store *s, uint64_t h, PyObject *dev, PyObject *key) {
    size_t i = slot_of(s, h);
    for (;;) {
        Hot *e = &s->hot[i];
        if (e->dev == NULL) return i;
        if (e->hash == h && str_eq(e->dev, dev) && str_eq(e->key, key)) return i;
        i = (i + 1) & s->mask;
    }
}

static int alloc_table(Store *s, size_t cap) {
    Hot *hot = aligned_alloc(128, cap * sizeof(Hot));
    Cold *cold = malloc(cap * sizeof(Cold));
    if (hot == NULL || cold == NULL) {
        free(hot);
        free(cold);
        PyErr_NoMemory();
        return -1;
    }
    memset(hot, 0, cap * sizeof(Hot));
    s->hot = hot;
    s->cold = cold;
    s->mask = cap - 1;
    int bits = 0;
    while (((size_t)1 << bits) < cap) bits++;
    s->shift = 64 - bits;
    return 0;
}

static int grow(Store *s) {
    Hot *oh = s->hot;
    Cold *oc = s->cold;
    size_t ocap = s->mask + 1;
    if (alloc_table(s, ocap * 2) < 0) {
        s->hot = oh;
        s->cold = oc;
        s->mask = ocap - 1;
        return -1;
    }
    for (size_t i = 0; i < ocap; i++) {
        if (oh[i].dev == NULL) continue;
        size_t j = slot_of(s, oh[i].hash);
        while (s->hot[j].dev != NULL) j = (j + 1) & s->mask;
        s->hot[j] = oh[i];
        s->cold[j] = oc[i];
    }
    free(oh);
    free(oc);
    return 0;
}

/* Empty slot i (its references already released), shifting later entries of its run back
 * so lookups need no tombstones. */
static void remove_at(Store *s, size_t i) {
    size_t j = i;
    for (;;) {
        j = (j + 1) & s->mask;
        if (s->hot[j].dev == NULL) break;
        size_t home = slot_of(s, s->hot[j].hash);
        /* move j into the hole i unless its home lies cyclically in (i, j] */
        if (i <= j ? (i < home && home <= j) : (i < home || home <= j)) continue;
        s->hot[i] = s->hot[j];
        s->cold[i] = s->cold[j];
        i = j;
    }
    memset(&s->hot[i], 0, sizeof(Hot));
    s->used--;
}

static void release(Hot *e) {
    Py_CLEAR(e->dev);
    Py_CLEAR(e->key);
    Py_CLEAR(e->dkey);
    Py_CLEAR(e->mdev);
}

/* -- numbers ------------------------------------------------------------------------ */

/* 1: a float, or an int whose double is exact (|x| < 2**53), in *out (*is_int set); 0: not one. */
static int number(PyObject *v, double *out, int *is_int) {
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        *is_int = 0;
        return 1;
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        if (x >= EXACT_MAX || x <= -EXACT_MAX) return 0;
        *out = (double)x;
        *is_int = 1;
        return 1;
    }
    return 0;
}

static int int64(PyObject *v, int64_t *out) {
    if (!PyLong_CheckExact(v)) return 0;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = x;
    return 1;
}

static PyObject *box(double v, int is_int) { return is_int ? PyLong_FromLongLong((long long)v) : PyFloat_FromDouble(v); }

static PyObject *box_opt(double v, int is_int, int none) {
    if (none) Py_RETURN_NONE;
    return box(v, is_int);
}

/* -- glide ---------------------------------------------------------------------------- */

typedef struct {
    PyObject *p;     /* the ping's dict, or */
    const PBPing *b; /* its struct in a PingBatch */
    PyObject *cell, *dev, *key;
    uint64_t hash;
    int watched;     /* its cell is watched and glide sees it (glide's `see`) */
} Prep;

/* The ping's key and where it would sit; 0 (no error set) if the fast path cannot take it from
 * what is known before looking at the device's state. With `see`, a watched cell's ping is
 * marked (out->watched) and otherwise judged as if nobody watched. */
static int prepare_keys(PyObject *cell, PyObject *dev, PyObject *parents, PyObject *watched, PyObject *standing,
                        int see, Prep *out) {
    out->cell = cell;
    out->dev = dev;
    int r = PyDict_Contains(watched, cell);
    if (r < 0) return -1;
    out->watched = see && r;
    PyObject *key = PyDict_GetItemWithError(parents, cell);
    if (key == NULL || !PyUnicode_CheckExact(key)) return 0; /* a new cell: Python caches its key */
    /* someone stands near (Spots.see) unless seen here, or this one stood (Spots.lift): Python's business */
    if (r && !see) return 0;
    r = PyDict_Contains(standing, dev);
    if (r != 0) return r < 0 ? -1 : 0;
    Py_hash_t hd = PyObject_Hash(dev), hk = PyObject_Hash(key);
    if (hd == -1 || hk == -1) return -1;
    out->key = key;
    out->hash = combine(hd, hk);
    return 1;
}

/* A ping dict's device and key (prepare_keys). */
static int prepare(PyObject *p, PyObject *parents, PyObject *watched, PyObject *standing, int see, Prep *out) {
    out->watched = 0;
    if (!PyDict_CheckExact(p)) return 0;
    PyObject *cell = PyDict_GetItemWithError(p, k_cell);
    PyObject *dev = cell ? PyDict_GetItemWithError(p, k_device_id) : NULL;
    if (dev == NULL || !PyUnicode_CheckExact(cell) || !PyUnicode_CheckExact(dev)) return 0;
    out->p = p;
    out->b = NULL;
    return prepare_keys(cell, dev, parents, watched, standing, see, out);
}

/* Ping i of a list or a PingBatch (prepare_keys). */
static int prepare_at(PyObject *pings, Py_ssize_t i, PyObject *parents, PyObject *watched, PyObject *standing,
                      int see, Prep *out) {
    if (PyList_CheckExact(pings)) return prepare(PyList_GET_ITEM(pings, i), parents, watched, standing, see, out);
    const PBPing *b = &((PingBatch *)pings)->p[i];
    out->p = NULL;
    out->b = b;
    return prepare_keys(b->cell, b->dev, parents, watched, standing, see, out);
}

/* The numbers glide reads: from the dict (0 if one is not a number the struct holds exactly),
 * or from the batch's struct, whose int flags are number()'s is_int. */
typedef struct {
    double ts, speed, lat, lon, hd;
    int ts_i, speed_i, lat_i, lon_i, hd_i;
    int64_t seq;
} Vals;

static int values(const Prep *pr, Vals *v) {
    const PBPing *b = pr->b;
    if (b != NULL) {
        unsigned ints = b->ints;
        *v = (Vals){b->ts, b->speed, b->lat, b->lon, b->heading, (ints >> PB_TS) & 1, (ints >> PB_SPEED) & 1,
                    (ints >> PB_LAT) & 1, (ints >> PB_LON) & 1, (ints >> PB_HEADING) & 1, b->seq};
        return 1;
    }
    PyObject *p = pr->p;
    PyObject *ts_o = PyDict_GetItemWithError(p, k_ts), *speed_o = PyDict_GetItemWithError(p, k_speed);
    PyObject *seq_o = PyDict_GetItemWithError(p, k_seq), *lat_o = PyDict_GetItemWithError(p, k_lat);
    PyObject *lon_o = PyDict_GetItemWithError(p, k_lon), *hd_o = PyDict_GetItemWithError(p, k_heading);
    if (!(ts_o && speed_o && seq_o && lat_o && lon_o && hd_o)) return 0;
    return number(ts_o, &v->ts, &v->ts_i) && number(speed_o, &v->speed, &v->speed_i) &&
           number(lat_o, &v->lat, &v->lat_i) && number(lon_o, &v->lon, &v->lon_i) && number(hd_o, &v->hd, &v->hd_i) &&
           int64(seq_o, &v->seq);
}

/* The engine's spots.see(cell, device, p["ts"], p["lat"], p["lon"], p["speed_mps"], p["heading_deg"]) on
 * watched: 1 seen, 0 not (a dict's number that is not one a struct holds: the engine's loop sees
 * that ping), -1 error. The batch's doubles are the dict's numbers exactly, as _spots.see reads them. */
static int see_ping(const Prep *pr, PyObject *watched) {
    double ts, lat, lon, speed, hd;
    const PBPing *b = pr->b;
    if (b != NULL) {
        ts = b->ts, lat = b->lat, lon = b->lon, speed = b->speed, hd = b->heading;
    } else {
        PyObject *p = pr->p;
        PyObject *ts_o = PyDict_GetItemWithError(p, k_ts), *lat_o = PyDict_GetItemWithError(p, k_lat);
        PyObject *lon_o = PyDict_GetItemWithError(p, k_lon), *speed_o = PyDict_GetItemWithError(p, k_speed);
        PyObject *hd_o = PyDict_GetItemWithError(p, k_heading);
        int is_int;
        if (!(ts_o && lat_o && lon_o && speed_o && hd_o && number(ts_o, &ts, &is_int) && number(lat_o, &lat, &is_int) &&
              number(lon_o, &lon, &is_int) && number(speed_o, &speed, &is_int) && number(hd_o, &hd, &is_int)))
            return 0;
    }
    return see_cell(watched, pr->cell, pr->dev, ts, lat, lon, speed, hd) < 0 ? -1 : 1;
}

/* motion.glide on the stored device: 1 taken, 0 refused (nothing changed). */
static int glide_one(Store *s, const Prep *pr, double now, int now_int) {
    Hot *e = &s->hot[find(s, pr->hash, pr->dev, pr->key)];
    if (e->dev == NULL || !(e->nones & N_STILL_SINCE)) return 0; /* not stored, or standing */
    Vals v;
    if (!values(pr, &v)) return 0;
    unsigned ints = e->ints;
    if (v.speed <= STILL_MPS) return 0;
    /* Python's arithmetic: an int operand is converted to float (exact below 2**53), int - int
     * is exact. Two ints' difference rounds here only past 2**53: dt is then refused anyway
     * (> GAP_S), and a speed difference that large is as far past the brake threshold either
     * way, so every decision is Python's (int / int is correctly rounded in both). */
    double dt = v.ts - e->ts;
    if (!(0 < dt && dt <= GAP_S)) return 0;
    if (dt <= MAX_BRAKE_DT_S && (e->speed - v.speed) / dt >= HARD_BRAKE_MPS2) return 0;
    e->heading = v.hd;
    e->seq = v.seq;
    e->ts = v.ts;
    e->lat = v.lat;
    e->lon = v.lon;
    e->speed = v.speed;
    e->seen_at = now;
    e->ints = (uint16_t)((ints & ~GLIDE_INTS) | ((unsigned)v.ts_i << F_TS) | ((unsigned)v.lat_i << F_LAT) |
                         ((unsigned)v.lon_i << F_LON) | ((unsigned)v.speed_i << F_SPEED) |
                         ((unsigned)v.hd_i << F_HEADING) | ((unsigned)now_int << F_SEEN));
    return 1;
}

/* glide(pings, start, now, parents, watched, standing, see=False) -> the index i of the first ping
 * not taken, or ~i (negative) if that ping's cell is watched and it was seen here first.
 * pings: a list of dicts or a PingBatch.
 *
 * A ping of a watched cell (someone stands near) stops the glide, unless `see`: then it is the
 * engine's loop's watched ping done here, in the same order with the pings around it: Spots.see
 * (_spots.see on `watched`, which must then be Spots.by_cell), then the glide as if nobody
 * watched. If that refuses, ~i tells the loop not to see it again. */
static PyObject *Store_glide(Store *s, PyObject *args) {
    PyObject *pings, *now_o, *parents, *watched, *standing;
    Py_ssize_t i;
    int see = 0;
    if (!PyArg_ParseTuple(args, "OnOO!O!O!|p", &pings, &i, &now_o, &PyDict_Type, &parents, &PyDict_Type, &watched,
                          &PyDict_Type, &standing, &see))
        return NULL;
    Py_ssize_t n;
    if (PyList_CheckExact(pings)) {
        n = PyList_GET_SIZE(pings);
    } else if (Py_IS_TYPE(pings, PingBatchType)) {
        n = ((PingBatch *)pings)->n;
    } else {
        return PyErr_Format(PyExc_TypeError, "glide: pings must be a list or a PingBatch, not %.100s",
                            Py_TYPE(pings)->tp_name);
    }
    double now;
    int now_int;
    if (i < 0 || s->used == 0 || !number(now_o, &now, &now_int)) return PyLong_FromSsize_t(i < 0 ? 0 : i);
    see = see && PyDict_GET_SIZE(watched) > 0;
    Prep cur, nxt;
    int have = i < n ? prepare_at(pings, i, parents, watched, standing, see, &cur) : 0;
    int seen = 0; /* ping i was seen here */
    while (i < n) {
        if (have < 0) return NULL;
        if (cur.watched) {
            seen = see_ping(&cur, watched);
            if (seen <= 0) { /* an error, or a number the loop must read */
                if (seen < 0) return NULL;
                break;
            }
        }
        if (have == 0) break;
        /* the next ping's slot is fetched while this one is handled: the misses overlap */
        int next = i + 1 < n ? prepare_at(pings, i + 1, parents, watched, standing, see, &nxt) : 0;
        if (next < 0) return NULL;
        if (next > 0) {
            const char *at = (const char *)&s->hot[slot_of(s, nxt.hash)];
            __builtin_prefetch(at, 1);
            __builtin_prefetch(at + 64, 1);
        }
        if (!glide_one(s, &cur, now, now_int)) break;
        seen = 0;
        i++;
        cur = nxt;
        have = next;
    }
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromSsize_t(seen ? ~i : i);
}

/* -- in and out ------------------------------------------------------------------------ */

static int attr_num(PyObject *o, PyObject *name, double *out, unsigned *ints, int bit) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    int is_int, ok = number(v, out, &is_int);
    Py_DECREF(v);
    if (ok && is_int) *ints |= 1u << bit;
    return ok;
}

static int attr_opt(PyObject *o, PyObject *name, double *out, unsigned *ints, int bit, unsigned *nones,
                    unsigned none_bit) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    int ok = 1, is_int = 0;
    if (v == Py_None) {
        *nones |= none_bit;
        *out = 0.0;
    } else {
        ok = number(v, out, &is_int);
        if (ok && is_int) *ints |= 1u << bit;
    }
    Py_DECREF(v);
    return ok;
}

static int attr_int(PyObject *o, PyObject *name, int64_t *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    int ok = int64(v, out);
    Py_DECREF(v);
    return ok;
}

#define TRY(x)              \
    do {                    \
        int r_ = (x);       \
        if (r_ < 0) goto error; \
        if (r_ == 0) goto refuse; \
    } while (0)

/* put(device, key, dkey, state, partition) -> bool: False (nothing kept) if a field does not fit */
static PyObject *Store_put(Store *s, PyObject *args) {
    PyObject *dev, *key, *dkey, *st, *m = NULL, *mdev = NULL, *v;
    int partition;
    if (!PyArg_ParseTuple(args, "UUUOi", &dev, &key, &dkey, &st, &partition)) return NULL;
    if (MotionTracker == NULL) return PyErr_Format(PyExc_RuntimeError, "_movers.bind was not called");
    Hot h = {0};
    Cold c = {0};
    unsigned ints = 0, nones = 0;
    if (!PyUnicode_CheckExact(dev) || !PyUnicode_CheckExact(key) || !PyUnicode_CheckExact(dkey) ||
        Py_TYPE(st) != (PyTypeObject *)StallState)
        Py_RETURN_FALSE;
    v = PyObject_GetAttr(st, a_stall);
    if (v == NULL) return NULL;
    Py_DECREF(v);
    if (v != Py_None) Py_RETURN_FALSE; /* an open stall lives in Python */
    m = PyObject_GetAttr(st, a_motion);
    if (m == NULL) return NULL;
    if (Py_TYPE(m) != (PyTypeObject *)MotionTracker) goto refuse;
    mdev = PyObject_GetAttr(m, a_device);
    if (mdev == NULL) goto error;
    if (!PyUnicode_CheckExact(mdev)) goto refuse;
    TRY(attr_int(m, a_seq, &h.seq));
    TRY(attr_num(m, a_ts, &h.ts, &ints, F_TS));
    TRY(attr_num(m, a_lat, &h.lat, &ints, F_LAT));
    TRY(attr_num(m, a_lon, &h.lon, &ints, F_LON));
    TRY(attr_num(m, a_speed, &h.speed, &ints, F_SPEED));
    TRY(attr_num(m, a_heading, &h.heading, &ints, F_HEADING));
    TRY(attr_num(m, a_seen_at, &h.seen_at, &ints, F_SEEN));
    TRY(attr_opt(m, a_still_since, &h.still_since, &ints, F_STILL_SINCE, &nones, N_STILL_SINCE));
    TRY(attr_num(m, a_still_lat, &h.still_lat, &ints, F_STILL_LAT));
    TRY(attr_num(m, a_still_lon, &h.still_lon, &ints, F_STILL_LON));
    TRY(attr_int(m, a_still_n, &c.still_n));
    TRY(attr_opt(m, a_told_at, &c.told_at, &ints, F_TOLD, &nones, N_TOLD));
    TRY(attr_opt(m, a_brake_ts, &c.brake_ts, &ints, F_BRAKE_TS, &nones, N_BRAKE_TS));
    TRY(attr_num(m, a_brake_decel, &c.brake_decel, &ints, F_BRAKE_DECEL));
    TRY(attr_opt(st, a_alerted, &c.alerted_since, &ints, F_ALERTED, &nones, N_ALERTED));
    TRY(attr_opt(st, a_parked, &c.parked_since, &ints, F_PARKED, &nones, N_PARKED));
    Py_hash_t hd = PyObject_Hash(dev), hk = PyObject_Hash(key);
    if (hd == -1 || hk == -1) goto error;
    if ((size_t)(s->used + 1) * 10 > (s->mask + 1) * 7 && grow(s) < 0) goto error; /* load <= 0.7 */
    h.hash = combine(hd, hk);
    size_t i = find(s, h.hash, dev, key);
    Hot *e = &s->hot[i];
    if (e->dev != NULL)
        release(e); /* replaced */
    else
        s->used++;
    h.ints = (uint16_t)ints;
    h.nones = (uint8_t)nones;
    h.partition = partition;
    Py_INCREF(dev);
    Py_INCREF(key);
    Py_INCREF(dkey);
    h.dev = dev;
    h.key = key;
    h.dkey = dkey;
    h.mdev = mdev; /* mdev's reference moves in */
    *e = h;
    s->cold[i] = c;
    Py_DECREF(m);
    Py_RETURN_TRUE;
refuse:
    Py_XDECREF(mdev);
    Py_XDECREF(m);
    Py_RETURN_FALSE;
error:
    Py_XDECREF(mdev);
    Py_XDECREF(m);
    return NULL;
}

/* The StallState of slot i (a new object; the slot is left as it is). */
static PyObject *materialise(Store *s, size_t i) {
    Hot *e = &s->hot[i];
    Cold *c = &s->cold[i];
    unsigned ints = e->ints, nones = e->nones;
#define I(f) ((ints >> (f)) & 1)
    PyObject *margs = Py_BuildValue(
        "(OLNNNNNNNNNLNNN)", e->mdev, (long long)e->seq, box(e->ts, I(F_TS)), box(e->lat, I(F_LAT)),
        box(e->lon, I(F_LON)), box(e->speed, I(F_SPEED)), box(e->heading, I(F_HEADING)),
        box(e->seen_at, I(F_SEEN)), box_opt(e->still_since, I(F_STILL_SINCE), nones & N_STILL_SINCE),
        box(e->still_lat, I(F_STILL_LAT)), box(e->still_lon, I(F_STILL_LON)), (long long)c->still_n,
        box_opt(c->told_at, I(F_TOLD), nones & N_TOLD), box_opt(c->brake_ts, I(F_BRAKE_TS), nones & N_BRAKE_TS),
        box(c->brake_decel, I(F_BRAKE_DECEL)));
    if (margs == NULL) return NULL;
    PyObject *m = PyObject_Call(MotionTracker, margs, NULL);
    Py_DECREF(margs);
    if (m == NULL) return NULL;
    PyObject *sargs = Py_BuildValue("(NONN)", m, Py_None, box_opt(c->alerted_since, I(F_ALERTED), nones & N_ALERTED),
                                    box_opt(c->parked_since, I(F_PARKED), nones & N_PARKED));
#undef I
    if (sargs == NULL) return NULL;
    PyObject *st = PyObject_Call(StallState, sargs, NULL);
    Py_DECREF(sargs);
    return st;
}

static int lookup(Store *s, PyObject *args, size_t *slot) {
    PyObject *dev, *key;
    if (!PyArg_ParseTuple(args, "UU", &dev, &key)) return -1;
    if (s->used == 0) return 0;
    Py_hash_t hd = PyObject_Hash(dev), hk = PyObject_Hash(key);
    if (hd == -1 || hk == -1) return -1;
    *slot = find(s, combine(hd, hk), dev, key);
    return s->hot[*slot].dev != NULL;
}

/* take(device, key) -> StallState | None: the device's state, out of the store */
static PyObject *Store_take(Store *s, PyObject *args) {
    size_t i;
    int r = lookup(s, args, &i);
    if (r <= 0) {
        if (r < 0) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *st = materialise(s, i);
    if (st == NULL) return NULL;
    release(&s->hot[i]);
    remove_at(s, i);
    return st;
}

/* get(device, key) -> StallState | None: a copy, the store keeps the device */
static PyObject *Store_get(Store *s, PyObject *args) {
    size_t i;
    int r = lookup(s, args, &i);
    if (r <= 0) {
        if (r < 0) return NULL;
        Py_RETURN_NONE;
    }
    return materialise(s, i);
}

/* Remove every entry for which drop(slot) says so, appending its table key to `out`. */
static PyObject *remove_where(Store *s, int (*drop)(const Store *, size_t, void *), void *arg) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    size_t i = 0, cap = s->mask + 1;
    /* a removal shifts later entries of the run back into slot i: look at i again. An entry
     * only ever moves from a slot the scan has not reached into one it has not left yet, or
     * (across the wrap) from the table's start, already seen and kept, to its end: seen
     * twice, kept twice. So every entry is judged and none is missed. */
    while (i < cap) {
        Hot *e = &s->hot[i];
        if (e->dev != NULL && drop(s, i, arg)) {
            if (PyList_Append(out, e->dkey) < 0) {
                Py_DECREF(out);
                return NULL;
            }
            release(e);
            remove_at(s, i);
            continue;
        }
        i++;
    }
    return out;
}

static int silent(const Store *s, size_t i, void *arg) { return *(double *)arg - s->hot[i].seen_at > TTL_S; }

/* expire(now) -> [table keys]: devices silent for > TTL_S (stall.expire with no stall open) */
static PyObject *Store_expire(Store *s, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    return remove_where(s, silent, &now);
}

static int not_kept(const Store *s, size_t i, void *arg) {
    PyObject *p = PyLong_FromLong(s->hot[i].partition);
    if (p == NULL) return 0;
    int r = PySet_Contains((PyObject *)arg, p);
    Py_DECREF(p);
    return r == 0;
}

/* forget(keep: set[int]) -> [table keys]: entries of partitions not in keep */
static PyObject *Store_forget(Store *s, PyObject *keep) {
    if (!PyAnySet_Check(keep)) return PyErr_Format(PyExc_TypeError, "forget: keep must be a set");
    PyObject *out = remove_where(s, not_kept, keep);
    if (out != NULL && PyErr_Occurred()) Py_CLEAR(out);
    return out;
}

/* keys() -> {table key: partition} */
static PyObject *Store_keys(Store *s, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    for (size_t i = 0; i <= s->mask; i++) {
        Hot *e = &s->hot[i];
        if (e->dev == NULL) continue;
        PyObject *p = PyLong_FromLong(e->partition);
        if (p == NULL || PyDict_SetItem(out, e->dkey, p) < 0) {
            Py_XDECREF(p);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(p);
    }
    return out;
}

/* items() -> [(table key, StallState)]: every entry materialised (tests, tools) */
static PyObject *Store_items(Store *s, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (size_t i = 0; i <= s->mask; i++) {
        if (s->hot[i].dev == NULL) continue;
        PyObject *st = materialise(s, i);
        PyObject *t = st ? PyTuple_Pack(2, s->hot[i].dkey, st) : NULL;
        Py_XDECREF(st);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(t);
    }
    return out;
}

static Py_ssize_t Store_len(Store *s) { return s->used; }

static void clear_all(Store *s) {
    for (size_t i = 0; i <= s->mask; i++)
        if (s->hot[i].dev != NULL) release(&s->hot[i]);
    memset(s->hot, 0, (s->mask + 1) * sizeof(Hot));
    s->used = 0;
}

static PyObject *Store_clear(Store *s, PyObject *Py_UNUSED(ignored)) {
    clear_all(s);
    Py_RETURN_NONE;
}

static PyObject *Store_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) || (kw != NULL && PyDict_GET_SIZE(kw)))
        return PyErr_Format(PyExc_TypeError, "Store() takes no arguments");
    Store *s = (Store *)type->tp_alloc(type, 0);
    if (s == NULL) return NULL;
    if (alloc_table(s, 1024) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    return (PyObject *)s;
}

static void Store_dealloc(Store *s) {
    if (s->hot != NULL) clear_all(s);
    free(s->hot);
    free(s->cold);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMethodDef Store_methods[] = {
    {"glide", (PyCFunction)Store_glide, METH_VARARGS, "motion.glide on stored devices, from pings[start] on."},
    {"put", (PyCFunction)Store_put, METH_VARARGS, "Keep a StallState with nothing open; False if it does not fit."},
    {"take", (PyCFunction)Store_take, METH_VARARGS, "The device's StallState, out of the store (or None)."},
    {"get", (PyCFunction)Store_get, METH_VARARGS, "A copy of the device's StallState (or None)."},
    {"expire", (PyCFunction)Store_expire, METH_O, "Drop devices silent for > TTL_S; their table keys."},
    {"forget", (PyCFunction)Store_forget, METH_O, "Drop the entries of partitions not kept; their table keys."},
    {"keys", (PyCFunction)Store_keys, METH_NOARGS, "{table key: partition} of every entry."},
    {"items", (PyCFunction)Store_items, METH_NOARGS, "[(table key, StallState)] of every entry."},
    {"clear", (PyCFunction)Store_clear, METH_NOARGS, "Drop everything."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Store_seq = {.sq_length = (lenfunc)Store_len};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pipeline._movers.Store",
    .tp_basicsize = sizeof(Store),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Moving devices with nothing open, as C structs keyed by (device, res-7 key).",
    .tp_new = Store_new,
    .tp_dealloc = (destructor)Store_dealloc,
    .tp_methods = Store_methods,
    .tp_as_sequence = &Store_seq,
};

/* bind(MotionTracker, StallState, still_mps, gap_s, max_brake_dt_s, hard_brake_mps2, ttl_s) */
static PyObject *bind(PyObject *self, PyObject *args) {
    PyObject *mt, *ss;
    if (!PyArg_ParseTuple(args, "O!O!ddddd", &PyType_Type, &mt, &PyType_Type, &ss, &STILL_MPS, &GAP_S,
                          &MAX_BRAKE_DT_S, &HARD_BRAKE_MPS2, &TTL_S))
        return NULL;
    Py_INCREF(mt);
    Py_INCREF(ss);
    Py_XSETREF(MotionTracker, mt);
    Py_XSETREF(StallState, ss);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "Give the module the trackers' classes and motion's constants (engine does)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pipeline._movers", NULL, -1, methods};

PyMODINIT_FUNC PyInit__movers(void) {
#define KEY(var, s) \
    if ((var = PyUnicode_InternFromString(s)) == NULL) return NULL
    KEY(k_cell, "cell");
    KEY(k_device_id, "device_id");
    KEY(k_seq, "seq");
    KEY(k_ts, "ts");
    KEY(k_lat, "lat");
    KEY(k_lon, "lon");
    KEY(k_speed, "speed_mps");
    KEY(k_heading, "heading_deg");
    KEY(a_motion, "motion");
    KEY(a_stall, "stall");
    KEY(a_alerted, "alerted_since");
    KEY(a_parked, "parked_since");
    KEY(a_device, "device");
    KEY(a_seq, "seq");
    KEY(a_ts, "ts");
    KEY(a_lat, "lat");
    KEY(a_lon, "lon");
    KEY(a_speed, "speed");
    KEY(a_heading, "heading");
    KEY(a_seen_at, "seen_at");
    KEY(a_still_since, "still_since");
    KEY(a_still_lat, "still_lat");
    KEY(a_still_lon, "still_lon");
    KEY(a_still_n, "still_n");
    KEY(a_told_at, "told_at");
    KEY(a_brake_ts, "brake_ts");
    KEY(a_brake_decel, "brake_decel");
#undef KEY
    if (pingbatch_import() < 0) return NULL;
    PyObject *spots = PyImport_ImportModule("pipeline._spots"); /* PyCapsule_Import imports only "pipeline" */
    if (spots == NULL) return NULL;
    Py_DECREF(spots);
    if ((see_cell = (SeeCell)PyCapsule_Import("pipeline._spots.see_c", 0)) == NULL) return NULL;
    if (PyType_Ready(&StoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&StoreType);
    if (PyModule_AddObject(m, "Store", (PyObject *)&StoreType) < 0) {
        Py_DECREF(&StoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
