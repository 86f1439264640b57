/* pipeline._window: the speed windows in C — the ``CellSpeedWindow`` type (pipeline/_speedwin.c,
 * its storage and semantics; pipeline/_speedwin_io.c, its bytes) and the per-record count.
 *
 * ``add_pings`` counts every ping of a decoded record into its cell's window, as the engine's
 * loop did in Python (``ReferenceWindow.add`` per ping): parked phones skipped, a counted ping's
 * cell into ``touched``, and into ``wake`` once its window's ``added`` reached ``wake_at``. The
 * record is a list of ping dicts or a ``PingBatch`` (pipeline/_pingbatch.h), whose structs it
 * reads without a Python object per ping.
 *
 * A record's pings mostly go to as many cells (the bench city: ~60 cells in a 64-ping record), so
 * each ping's count is a chain of cache misses (its window, then the window's index, dedupe entry,
 * bucket, sector...). For a batch, the count looks each window up a few pings early and fetches
 * what it will read stage by stage (win_ahead_*, pipeline/_speedwin.c) while it counts the pings
 * before: the count itself still goes ping by ping, in order, with the same calls.
 */
#include "_speedwin.h"
#include "_pingbatch.h"

static PyObject *k_cell, *k_device_id, *k_seq, *k_ts, *k_speed, *k_heading, *k_state, *s_parked;

/* One record's count: its arguments and what it has done so far. */
typedef struct {
    PyObject *windows, *load, *part, *touched, *wake;
    Num now;
    long long duplicates;
    /* bumped by every load() call: Python code ran, so a window looked up before it may have left
     * ``windows`` (or been freed) and a cell may have come in: a Hint of another gen is stale */
    unsigned gen;
} Rec;

/* windows[cell] as looked up a few pings early (add_batch) */
typedef struct {
    PyObject *win; /* borrowed; NULL: not in the dict */
    unsigned gen;  /* Rec.gen at the look-up */
    int valid;     /* 0: not looked up (use the dict) */
} Hint;

/* One ping counted into windows[cell] (``load`` gives a window the dict does not hold): 0, or -1
 * with a Python error; duplicates + 1 when it was not counted. ``hint``: the look-up done ahead,
 * used while no load() ran since (else the dict is asked again). */
static int count_one(Rec *r, const Hint *hint, PyObject *cell, PyObject *dev, int64_t seq, Num ts, Num speed,
                     Num heading) {
    PyObject *win;
    if (hint != NULL && hint->valid && hint->gen == r->gen) {
        win = hint->win;
    } else {
        win = PyDict_GetItemWithError(r->windows, cell);
        if (win == NULL && PyErr_Occurred()) return -1;
    }
    /* a window found in the dict is not set again (windows[cell] = the same object changes nothing) */
    int in_dict = win != NULL;
    if (in_dict) {
        Py_INCREF(win); /* a cell's __eq__ may run Python code in the set adds below */
    } else {
        win = PyObject_CallFunctionObjArgs(r->load, cell, r->part, NULL);
        r->gen++;
        if (win == NULL) return -1;
    }
    int rc;
    if (!Py_IS_TYPE(win, WinType)) {
        PyErr_Format(PyExc_TypeError, "add_pings: a window is a %.100s, not a CellSpeedWindow", Py_TYPE(win)->tp_name);
        rc = -1;
    } else {
        Win *w = (Win *)win;
        rc = win_add(w, dev, seq, ts, speed, heading, r->now);
        if (rc == 1) {
            if ((!in_dict && PyDict_SetItem(r->windows, cell, win) < 0) || PySet_Add(r->touched, cell) < 0 ||
                (w->added >= w->wake_at && PySet_Add(r->wake, cell) < 0))
                rc = -1;
        } else if (rc == 0) {
            r->duplicates++;
        }
    }
    Py_DECREF(win);
    return rc < 0 ? -1 : 0;
}

/* The dicts of a list of pings. */
static int add_list(PyObject *list, Rec *r) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *p = PyList_GET_ITEM(list, i);
        if (!PyDict_CheckExact(p)) {
            PyErr_SetString(PyExc_TypeError, "add_pings: a ping is not a dict");
            return -1;
        }
        PyObject *state = PyDict_GetItemWithError(p, k_state);
        if (state != NULL) {
            int parked = PyObject_RichCompareBool(state, s_parked, Py_EQ);
            if (parked < 0) return -1;
            if (parked) continue; /* a parked phone is not traffic */
        } else if (PyErr_Occurred()) {
            return -1;
        }
        PyObject *cell = PyDict_GetItemWithError(p, k_cell), *dev = PyDict_GetItemWithError(p, k_device_id);
        PyObject *seq_o = PyDict_GetItemWithError(p, k_seq), *ts_o = PyDict_GetItemWithError(p, k_ts);
        PyObject *speed_o = PyDict_GetItemWithError(p, k_speed), *heading_o = PyDict_GetItemWithError(p, k_heading);
        if (!(cell && dev && seq_o && ts_o && speed_o && heading_o)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "add_pings: a ping lacks a field");
            return -1;
        }
        Num ts, speed, heading;
        int64_t seq;
        if (check_device(dev) < 0 || parse_seq(seq_o, &seq) < 0 || parse_num(ts_o, &ts) < 0 ||
            parse_num(speed_o, &speed) < 0 || parse_num(heading_o, &heading) < 0)
            return -1;
        if (count_one(r, NULL, cell, dev, seq, ts, speed, heading) < 0)
            return -1;
    }
    return 0;
}

/* How far ahead of the ping it counts add_batch looks: the window (a dict look-up), then each
 * stage of win_ahead_* one ping later. A ping takes longer than a miss: one ping apart is enough. */
enum { AHEAD_DICT = 4, AHEAD_INDEX = 3, AHEAD_ENTRY = 2, AHEAD_SECTOR = 1, HINTS = 8 };

/* the window of ping j's cell, if it is a CellSpeedWindow the hint of the current gen holds */
static inline const Win *hinted(const Rec *r, const Hint *hint) {
    if (!hint->valid || hint->gen != r->gen || hint->win == NULL || !Py_IS_TYPE(hint->win, WinType)) return NULL;
    return (const Win *)hint->win;
}

/* a str's hash if it is known (no hashing here: a device's str was hashed by the decode) */
static inline Py_hash_t known_hash(PyObject *s) {
    return PyUnicode_CheckExact(s) ? ((PyASCIIObject *)s)->hash : -1;
}

/* The look-up ahead of ping p: no Python code can run (a cell is an exact str: the dict compares
 * it without calling __eq__ of a str key), else no hint. */
static void look_ahead(Rec *r, const PBPing *p, Hint *hint) {
    hint->valid = 0;
    if (p->state == PB_PARKED || !PyUnicode_CheckExact(p->cell) || known_hash(p->cell) == -1) return;
    PyObject *win = PyDict_GetItemWithError(r->windows, p->cell);
    if (win == NULL && PyErr_Occurred()) { /* the count's own look-up raises it in its turn */
        PyErr_Clear();
        return;
    }
    hint->win = win;
    hint->gen = r->gen;
    hint->valid = 1;
    if (win != NULL) {
        __builtin_prefetch(win, 1, 3); /* the fields a count reads: sizeof(Win) <= 128 */
        __builtin_prefetch((char *)win + 64, 1, 3);
        __builtin_prefetch((char *)win + 127, 1, 3);
    }
}

/* The structs of a PingBatch: the same values the dicts would give (an integer literal's
 * double is exact, its flag is parse_num's is_int), read without a Python object. The count
 * goes in order, ping by ping; what it will read for the next few pings is fetched meanwhile. */
static int add_batch(PingBatch *b, Rec *r) {
    Hint hints[HINTS];
    const PBPing *ps = b->p;
    Py_ssize_t n = b->n;
    for (Py_ssize_t i = -AHEAD_DICT; i < n; i++) {
        Py_ssize_t j = i + AHEAD_DICT;
        if (j < n) look_ahead(r, &ps[j], &hints[j % HINTS]);
        const Win *w;
        Py_hash_t h;
        j = i + AHEAD_INDEX;
        if (j >= 0 && j < n && (w = hinted(r, &hints[j % HINTS])) != NULL && (h = known_hash(ps[j].dev)) != -1)
            win_ahead_index(w, h);
        j = i + AHEAD_ENTRY;
        if (j >= 0 && j < n && (w = hinted(r, &hints[j % HINTS])) != NULL && (h = known_hash(ps[j].dev)) != -1)
            win_ahead_entry(w, h, ps[j].ts);
        j = i + AHEAD_SECTOR;
        if (j >= 0 && j < n && (w = hinted(r, &hints[j % HINTS])) != NULL && (h = known_hash(ps[j].dev)) != -1)
            win_ahead_sector(w, h, ps[j].ts, ps[j].heading);
        if (i < 0) continue;
        const PBPing *p = &ps[i];
        if (p->state == PB_PARKED) continue; /* a parked phone is not traffic */
        Num ts = {p->ts, (p->ints >> PB_TS) & 1}, speed = {p->speed, (p->ints >> PB_SPEED) & 1};
        Num heading = {p->heading, (p->ints >> PB_HEADING) & 1};
        if (count_one(r, &hints[i % HINTS], p->cell, p->dev, p->seq, ts, speed, heading) < 0) return -1;
    }
    return 0;
}

/* add_pings(pings, windows, load, partition, now, touched, wake) -> duplicates
 *
 * Every ping of ``pings`` (a list of dicts or a PingBatch, in order) counted into
 * ``windows[p["cell"]]`` — ``load(cell, partition)`` gives a window the dict does not hold —
 * except parked phones. Returns how many were not counted (duplicates, windows over). */
static PyObject *add_pings(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !(PyList_CheckExact(args[0]) || Py_IS_TYPE(args[0], PingBatchType)) ||
        !PyDict_CheckExact(args[1]) || !PySet_CheckExact(args[5]) || !PySet_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "add_pings(list | PingBatch, dict, load, partition, now, set, set)");
        return NULL;
    }
    Num now;
    if (parse_num(args[4], &now) < 0 || check_now(now) < 0) return NULL;
    Rec r = {args[1], args[2], args[3], args[5], args[6], now, 0, 0};
    int rc = PyList_CheckExact(args[0]) ? add_list(args[0], &r) : add_batch((PingBatch *)args[0], &r);
    if (rc < 0) return NULL;
    return PyLong_FromLongLong(r.duplicates);
}

/* bind(SeqWindow, SectorBucket, SectorStats, loads, bucket_s, window_s, bin_per_mps, seq_window,
 *      sector_width, device_ttl_s, seen_sweep_s) */
static PyObject *bind(PyObject *self, PyObject *args) {
    PyObject *sw, *sb, *ss, *loads;
    long long seq_window;
    double bucket_s;
    if (!PyArg_ParseTuple(args, "OOOOdddLddd", &sw, &sb, &ss, &loads, &bucket_s, &WINDOW_S, &BIN_PER_MPS, &seq_window,
                          &SECTOR_WIDTH, &DEVICE_TTL_S, &SEEN_SWEEP_S))
        return NULL;
    if (seq_window != 256 || bucket_s != (double)(int64_t)bucket_s || bucket_s <= 0) {
        PyErr_SetString(PyExc_ValueError, "bind: the native window holds 256-seq masks and whole-second buckets");
        return NULL;
    }
    BUCKET_S = bucket_s;
    BUCKET_I = (int64_t)bucket_s;
    Py_XSETREF(SeqWindowCls, Py_NewRef(sw));
    Py_XSETREF(SectorBucketCls, Py_NewRef(sb));
    Py_XSETREF(SectorStatsCls, Py_NewRef(ss));
    Py_XSETREF(loads_fn, Py_NewRef(loads));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "Give the module the window's classes and constants (pipeline.speed does)."},
    {"add_pings", (PyCFunction)(void (*)(void))add_pings, METH_FASTCALL, "A record's pings into their windows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pipeline._window", NULL, -1, methods};

PyMODINIT_FUNC PyInit__window(void) {
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    NAME(k_cell, "cell");
    NAME(k_device_id, "device_id");
    NAME(k_seq, "seq");
    NAME(k_ts, "ts");
    NAME(k_speed, "speed_mps");
    NAME(k_heading, "heading_deg");
    NAME(k_state, "state");
    NAME(s_parked, "parked");
#undef NAME
    if (pingbatch_import() < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (speedwin_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
