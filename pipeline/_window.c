/* pipeline._window: the speed windows in C — the ``CellSpeedWindow`` type (pipeline/_speedwin.c,
 * its storage and semantics; pipeline/_speedwin_io.c, its bytes) and the per-record count.
 *
 * ``add_pings`` counts every ping of a decoded record into its cell's window, as the engine's
 * loop did in Python (``ReferenceWindow.add`` per ping): parked phones skipped, a counted ping's
 * cell into ``touched``, and into ``wake`` once its window's ``added`` reached ``wake_at``. The
 * record is a list of ping dicts or a ``PingBatch`` (pipeline/_pingbatch.h), whose structs it
 * reads without a Python object per ping.
 */
#include "_speedwin.h"
#include "_pingbatch.h"

static PyObject *k_cell, *k_device_id, *k_seq, *k_ts, *k_speed, *k_heading, *k_state, *s_parked;

/* One ping counted into windows[cell] (``load`` gives a window the dict does not hold): 0, or -1
 * with a Python error; *duplicates + 1 when it was not counted. */
static int count_one(PyObject *windows, PyObject *load, PyObject *part, PyObject *touched, PyObject *wake,
                     PyObject *cell, PyObject *dev, int64_t seq, Num ts, Num speed, Num heading, Num now,
                     long long *duplicates) {
    PyObject *win = PyDict_GetItemWithError(windows, cell);
    if (win != NULL) {
        Py_INCREF(win);
    } else {
        if (PyErr_Occurred()) return -1;
        win = PyObject_CallFunctionObjArgs(load, cell, part, NULL);
        if (win == NULL) return -1;
    }
    if (!Py_IS_TYPE(win, WinType)) {
        PyErr_Format(PyExc_TypeError, "add_pings: a window is a %.100s, not a CellSpeedWindow", Py_TYPE(win)->tp_name);
        Py_DECREF(win);
        return -1;
    }
    Win *w = (Win *)win;
    int rc = win_add(w, dev, seq, ts, speed, heading, now);
    if (rc == 1) {
        if (PyDict_SetItem(windows, cell, win) < 0 || PySet_Add(touched, cell) < 0 ||
            (w->added >= w->wake_at && PySet_Add(wake, cell) < 0))
            rc = -1;
    } else if (rc == 0) {
        (*duplicates)++;
    }
    Py_DECREF(win);
    return rc < 0 ? -1 : 0;
}

/* The dicts of a list of pings. */
static int add_list(PyObject *list, PyObject *windows, PyObject *load, PyObject *part, Num now, PyObject *touched,
                    PyObject *wake, long long *duplicates) {
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
        if (count_one(windows, load, part, touched, wake, cell, dev, seq, ts, speed, heading, now, duplicates) < 0)
            return -1;
    }
    return 0;
}

/* The structs of a PingBatch: the same values the dicts would give (an integer literal's
 * double is exact, its flag is parse_num's is_int), read without a Python object. */
static int add_batch(PingBatch *b, PyObject *windows, PyObject *load, PyObject *part, Num now, PyObject *touched,
                     PyObject *wake, long long *duplicates) {
    for (Py_ssize_t i = 0; i < b->n; i++) {
        const PBPing *p = &b->p[i];
        if (p->state == PB_PARKED) continue; /* a parked phone is not traffic */
        Num ts = {p->ts, (p->ints >> PB_TS) & 1}, speed = {p->speed, (p->ints >> PB_SPEED) & 1};
        Num heading = {p->heading, (p->ints >> PB_HEADING) & 1};
        if (count_one(windows, load, part, touched, wake, p->cell, p->dev, p->seq, ts, speed, heading, now,
                      duplicates) < 0)
            return -1;
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
    long long duplicates = 0;
    int rc = PyList_CheckExact(args[0])
                 ? add_list(args[0], args[1], args[2], args[3], now, args[5], args[6], &duplicates)
                 : add_batch((PingBatch *)args[0], args[1], args[2], args[3], now, args[5], args[6], &duplicates);
    if (rc < 0) return NULL;
    return PyLong_FromLongLong(duplicates);
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
