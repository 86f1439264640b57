/* pipeline._window: the speed windows' per-ping count (``CellSpeedWindow.add``) in C.
 *
 * The engine counts every ping of a record into its cell's window: the per-device seq
 * dedupe, the 30-s bucket, the heading sector, the histogram bin and the device set. In
 * Python that was the largest share of a worker's per-ping time (~40 % of ``on_pings``),
 * nearly all of it interpreter overhead around a handful of dict and set operations. Here
 * the same operations run on the same Python objects (``CellSpeedWindow``, ``SeqWindow``,
 * ``SectorBucket``), so everything else — readings, persistence, expiry — is unchanged.
 *
 * Semantics are exactly ``CellSpeedWindow.add`` (kept in Python as the reference and as the
 * raw baseline's aggregate); tests/unit/test_window_c.py holds the two equal. Values the
 * fast path does not take (numbers that are not a float or an int below 2**53, seqs past
 * 64 bits, out-of-order seqs) go through the Python methods, so nothing is approximated.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

static PyObject *SeqWindow = NULL, *SectorBucket = NULL;
static double BUCKET_S, WINDOW_S, BIN_PER_MPS, SECTOR_WIDTH;
static long long SEQ_WINDOW;
static PyObject *seq_mask = NULL; /* (1 << SEQ_WINDOW) - 1 */
static PyObject *s_seen, *s_buckets, *s_closed, *s_added, *s_wake_at, *s_hwm, *s_mask, *s_last_seen, *s_n,
    *s_total, *s_hist, *s_devices, *s_add, *s_accept, *k_cell, *k_device_id, *k_seq, *k_ts, *k_speed,
    *k_heading, *k_state, *s_parked, *one, *zero, *zero_f;

#define EXACT_MAX 9007199254740992.0 /* 2**53: ints below it are exact as doubles */

/* 1: a float, or an int whose double is exact, in *out; 0: anything else (the slow path). */
static int exact_number(PyObject *v, double *out) {
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
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
        return 1;
    }
    return 0;
}

static int small_int(PyObject *v, long long *out) {
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

/* Python's float ``a // b`` (Objects/floatobject.c, _float_div_mod), for b > 0. */
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

/* Python's float ``a % b`` for b > 0. */
static double py_mod(double a, double b) {
    double mod = fmod(a, b);
    if (mod) {
        if ((b < 0) != (mod < 0)) mod += b;
    } else {
        mod = copysign(0.0, b);
    }
    return mod;
}

/* attribute ``name`` of ``obj`` += 1 (an int): the new value in *out, -1 on error */
static int incr_attr(PyObject *obj, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    PyObject *nv = PyNumber_Add(v, one);
    Py_DECREF(v);
    if (nv == NULL) return -1;
    if (out != NULL && !small_int(nv, out)) *out = LLONG_MAX;
    int rc = PyObject_SetAttr(obj, name, nv);
    Py_DECREF(nv);
    return rc;
}

/* SectorBucket.add(speed, device) on ``b`` */
static int bucket_add(PyObject *b, PyObject *speed_o, double speed, PyObject *dev) {
    if (incr_attr(b, s_n, NULL) < 0) return -1;
    PyObject *total = PyObject_GetAttr(b, s_total);
    if (total == NULL) return -1;
    PyObject *nt = PyFloat_CheckExact(total) ? PyFloat_FromDouble(PyFloat_AS_DOUBLE(total) + speed)
                                             : PyNumber_Add(total, speed_o);
    Py_DECREF(total);
    if (nt == NULL) return -1;
    int rc = PyObject_SetAttr(b, s_total, nt);
    Py_DECREF(nt);
    if (rc < 0) return -1;
    PyObject *hist = PyObject_GetAttr(b, s_hist);
    if (hist == NULL) return -1;
    PyObject *bin = PyLong_FromLongLong((long long)(speed * BIN_PER_MPS)); /* int(): truncation */
    if (bin == NULL) {
        Py_DECREF(hist);
        return -1;
    }
    PyObject *count = PyDict_GetItemWithError(hist, bin);
    PyObject *nc = count != NULL ? PyNumber_Add(count, one) : (PyErr_Occurred() ? NULL : Py_NewRef(one));
    rc = nc == NULL ? -1 : PyDict_SetItem(hist, bin, nc);
    Py_XDECREF(nc);
    Py_DECREF(bin);
    Py_DECREF(hist);
    if (rc < 0) return -1;
    PyObject *devices = PyObject_GetAttr(b, s_devices);
    if (devices == NULL) return -1;
    rc = PySet_Add(devices, dev);
    Py_DECREF(devices);
    return rc;
}

/* An instance of the slotted dataclass ``cls`` with its fields set, without running its
 * ``__init__`` (Python code: ~0.5 µs, and a chance for the other thread to take the GIL
 * in the middle of a count). ``names``/``values``: the fields, all of them. */
static PyObject *make_slotted(PyObject *cls, PyObject **names, PyObject **values, int n) {
    PyTypeObject *tp = (PyTypeObject *)cls;
    PyObject *obj = tp->tp_alloc(tp, 0);
    if (obj == NULL) return NULL;
    for (int i = 0; i < n; i++) {
        if (values[i] == NULL || PyObject_SetAttr(obj, names[i], values[i]) < 0) {
            Py_DECREF(obj);
            return NULL;
        }
    }
    return obj;
}

/* SeqWindow(seq, 1, alive) */
static PyObject *new_seq_window(PyObject *seq, PyObject *alive) {
    PyObject *names[3] = {s_hwm, s_mask, s_last_seen}, *values[3] = {seq, one, alive};
    return make_slotted(SeqWindow, names, values, 3);
}

/* SectorBucket() */
static PyObject *new_sector_bucket(void) {
    PyObject *names[4] = {s_n, s_total, s_hist, s_devices};
    PyObject *values[4] = {zero, zero_f, PyDict_New(), PySet_New(NULL)};
    PyObject *b = make_slotted(SectorBucket, names, values, 4);
    Py_XDECREF(values[2]);
    Py_XDECREF(values[3]);
    return b;
}

/* dict[key] of an existing value, or a new one stored there (a dict, or with ``bucket`` a
 * SectorBucket); a new reference */
static PyObject *get_or_make(PyObject *dict, PyObject *key, int bucket) {
    PyObject *v = PyDict_GetItemWithError(dict, key);
    if (v != NULL) return Py_NewRef(v);
    if (PyErr_Occurred()) return NULL;
    v = bucket ? new_sector_bucket() : PyDict_New();
    if (v == NULL) return NULL;
    if (PyDict_SetItem(dict, key, v) < 0) {
        Py_DECREF(v);
        return NULL;
    }
    return v;
}

/* The seq dedupe of CellSpeedWindow.add: 1 new, 0 counted already, -1 error. */
static int accept(PyObject *win, PyObject *dev, PyObject *seq, PyObject *alive) {
    PyObject *seen = PyObject_GetAttr(win, s_seen);
    if (seen == NULL) return -1;
    PyObject *w = PyDict_GetItemWithError(seen, dev);
    long long seqv, hwm;
    int rc;
    if (w == NULL) {
        if (PyErr_Occurred() || !PyDict_CheckExact(seen)) {
            Py_DECREF(seen);
            return -1;
        }
        /* a device new to this cell: SeqWindow(seq, 1, alive), as accept() does */
        PyObject *nw = new_seq_window(seq, alive);
        rc = nw == NULL ? -1 : PyDict_SetItem(seen, dev, nw);
        Py_XDECREF(nw);
        Py_DECREF(seen);
        return rc < 0 ? -1 : 1;
    }
    Py_INCREF(w);
    Py_DECREF(seen);
    PyObject *hwm_o = PyObject_GetAttr(w, s_hwm);
    if (hwm_o == NULL) {
        Py_DECREF(w);
        return -1;
    }
    long long shift;
    int fast = small_int(seq, &seqv) && small_int(hwm_o, &hwm) && seqv > hwm && !__builtin_sub_overflow(seqv, hwm, &shift);
    Py_DECREF(hwm_o);
    if (!fast) { /* a replay, a reordered seq or a huge one: the Python rules */
        Py_DECREF(w);
        PyObject *r = PyObject_CallMethodObjArgs(win, s_accept, dev, seq, alive, NULL);
        if (r == NULL) return -1;
        rc = PyObject_IsTrue(r);
        Py_DECREF(r);
        return rc;
    }
    PyObject *mask;
    if (shift < SEQ_WINDOW) {
        PyObject *old = PyObject_GetAttr(w, s_mask);
        PyObject *sh = old == NULL ? NULL : PyLong_FromLongLong(shift);
        PyObject *a = sh == NULL ? NULL : PyNumber_Lshift(old, sh);
        PyObject *b = a == NULL ? NULL : PyNumber_Or(a, one);
        mask = b == NULL ? NULL : PyNumber_And(b, seq_mask);
        Py_XDECREF(old);
        Py_XDECREF(sh);
        Py_XDECREF(a);
        Py_XDECREF(b);
    } else {
        mask = Py_NewRef(one);
    }
    rc = mask == NULL ? -1 : PyObject_SetAttr(w, s_mask, mask);
    Py_XDECREF(mask);
    if (rc == 0) rc = PyObject_SetAttr(w, s_hwm, seq);
    if (rc == 0) rc = PyObject_SetAttr(w, s_last_seen, alive);
    Py_DECREF(w);
    return rc < 0 ? -1 : 1;
}

/* CellSpeedWindow.add: 1 counted, 0 not (duplicate or over), -1 error. */
static int add_one(PyObject *win, PyObject *dev, PyObject *seq, PyObject *ts_o, PyObject *speed_o,
                   PyObject *heading_o, PyObject *now_o, double now) {
    double ts, speed, heading;
    if (!(exact_number(ts_o, &ts) && exact_number(speed_o, &speed) && exact_number(heading_o, &heading) &&
          fabs(ts) < 1e15 && fabs(speed) < 1e15 && fabs(heading) < 1e15 && PyUnicode_CheckExact(dev))) {
        /* NaN, infinities, huge values: Python raises or keeps exact ints; the method decides */
        PyObject *r = PyObject_CallMethodObjArgs(win, s_add, dev, seq, ts_o, speed_o, heading_o, now_o, NULL);
        if (r == NULL) return -1;
        int rc = PyObject_IsTrue(r);
        Py_DECREF(r);
        return rc;
    }
    if (ts <= now - WINDOW_S) return 0;
    int rc = accept(win, dev, seq, ts > now ? ts_o : now_o);
    if (rc <= 0) return rc;
    long long start = (long long)py_floordiv(ts, BUCKET_S) * (long long)BUCKET_S;
    long long sec = (long long)py_floordiv(py_mod(heading + SECTOR_WIDTH / 2, 360.0), SECTOR_WIDTH);
    PyObject *start_o = PyLong_FromLongLong(start), *sec_o = PyLong_FromLongLong(sec);
    PyObject *buckets = NULL, *sectors = NULL, *closed = NULL, *bucket = NULL;
    rc = -1;
    if (start_o == NULL || sec_o == NULL) goto done;
    buckets = PyObject_GetAttr(win, s_buckets);
    if (buckets == NULL || !PyDict_CheckExact(buckets)) goto done;
    sectors = get_or_make(buckets, start_o, 0);
    if (sectors == NULL) goto done;
    closed = PyObject_GetAttr(win, s_closed);
    if (closed == NULL) goto done;
    if (closed != Py_None) {
        /* a late ping in a bucket the merge holds: counted there too (see CellSpeedWindow._closed) */
        long long key, open_start;
        if (!(PyTuple_CheckExact(closed) && PyTuple_GET_SIZE(closed) == 3 &&
              small_int(PyTuple_GET_ITEM(closed, 0), &key) && small_int(PyTuple_GET_ITEM(closed, 1), &open_start) &&
              PyDict_CheckExact(PyTuple_GET_ITEM(closed, 2)))) {
            PyErr_SetString(PyExc_TypeError, "CellSpeedWindow._closed: not (int, int, dict)");
            goto done;
        }
        if (start < open_start && start > key * (long long)BUCKET_S) {
            PyObject *merged = get_or_make(PyTuple_GET_ITEM(closed, 2), sec_o, 1);
            if (merged == NULL) goto done;
            int r2 = bucket_add(merged, speed_o, speed, dev);
            Py_DECREF(merged);
            if (r2 < 0) goto done;
        }
    }
    bucket = get_or_make(sectors, sec_o, 1);
    if (bucket == NULL || bucket_add(bucket, speed_o, speed, dev) < 0) goto done;
    rc = incr_attr(win, s_added, NULL) < 0 ? -1 : 1;
done:
    Py_XDECREF(start_o);
    Py_XDECREF(sec_o);
    Py_XDECREF(buckets);
    Py_XDECREF(sectors);
    Py_XDECREF(closed);
    Py_XDECREF(bucket);
    return rc;
}

/* add(window, device, seq, ts, speed, heading, now) -> bool: CellSpeedWindow.add */
static PyObject *add(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "add(window, device, seq, ts, speed, heading, now)");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[6]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    int rc = add_one(args[0], args[1], args[2], args[3], args[4], args[5], args[6], now);
    if (rc < 0) return NULL;
    return PyBool_FromLong(rc);
}

/* add_pings(pings, windows, load, partition, now, touched, wake) -> duplicates
 *
 * Every ping of ``pings`` (in order) counted into ``windows[p["cell"]]`` — ``load(cell,
 * partition)`` gives a window the dict does not hold — except parked phones; a counted
 * ping's cell goes into ``touched``, and into ``wake`` once its window's ``added`` reached
 * its ``wake_at``. Returns how many were not counted (duplicates, windows over). */
static PyObject *add_pings(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyList_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) || !PySet_CheckExact(args[5]) ||
        !PySet_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "add_pings(list, dict, load, partition, now, set, set)");
        return NULL;
    }
    PyObject *list = args[0], *windows = args[1], *load = args[2], *part = args[3], *now_o = args[4];
    PyObject *touched = args[5], *wake = args[6];
    double now = PyFloat_AsDouble(now_o);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    long long duplicates = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *p = PyList_GET_ITEM(list, i);
        if (!PyDict_CheckExact(p)) {
            PyErr_SetString(PyExc_TypeError, "add_pings: a ping is not a dict");
            return NULL;
        }
        PyObject *state = PyDict_GetItemWithError(p, k_state);
        if (state != NULL) {
            int parked = PyObject_RichCompareBool(state, s_parked, Py_EQ);
            if (parked < 0) return NULL;
            if (parked) continue; /* a parked phone is not traffic */
        } else if (PyErr_Occurred()) {
            return NULL;
        }
        PyObject *cell = PyDict_GetItemWithError(p, k_cell), *dev = PyDict_GetItemWithError(p, k_device_id);
        PyObject *seq = PyDict_GetItemWithError(p, k_seq), *ts = PyDict_GetItemWithError(p, k_ts);
        PyObject *speed = PyDict_GetItemWithError(p, k_speed), *heading = PyDict_GetItemWithError(p, k_heading);
        if (!(cell && dev && seq && ts && speed && heading)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "add_pings: a ping lacks a field");
            return NULL;
        }
        PyObject *win = PyDict_GetItemWithError(windows, cell);
        if (win != NULL) {
            Py_INCREF(win);
        } else {
            if (PyErr_Occurred()) return NULL;
            win = PyObject_CallFunctionObjArgs(load, cell, part, NULL);
            if (win == NULL) return NULL;
        }
        int rc = add_one(win, dev, seq, ts, speed, heading, now_o, now);
        if (rc == 1) {
            PyObject *added = NULL, *wake_at = NULL;
            int due = -1;
            if (PyDict_SetItem(windows, cell, win) == 0 && PySet_Add(touched, cell) == 0 &&
                (added = PyObject_GetAttr(win, s_added)) != NULL && (wake_at = PyObject_GetAttr(win, s_wake_at)) != NULL)
                due = PyObject_RichCompareBool(added, wake_at, Py_GE);
            Py_XDECREF(added);
            Py_XDECREF(wake_at);
            if (due == 1) due = PySet_Add(wake, cell) == 0 ? 1 : -1;
            if (due < 0) rc = -1;
        } else if (rc == 0) {
            duplicates++;
        }
        Py_DECREF(win);
        if (rc < 0) return NULL;
    }
    return PyLong_FromLongLong(duplicates);
}

/* bind(SeqWindow, SectorBucket, bucket_s, window_s, bin_per_mps, seq_window, sector_width) */
static PyObject *bind(PyObject *self, PyObject *args) {
    PyObject *sw, *sb;
    if (!PyArg_ParseTuple(args, "OOdddLd", &sw, &sb, &BUCKET_S, &WINDOW_S, &BIN_PER_MPS, &SEQ_WINDOW, &SECTOR_WIDTH))
        return NULL;
    if (!PyType_Check(sw) || !PyType_Check(sb)) {
        PyErr_SetString(PyExc_TypeError, "bind: SeqWindow and SectorBucket must be classes");
        return NULL;
    }
    Py_XSETREF(SeqWindow, Py_NewRef(sw));
    Py_XSETREF(SectorBucket, Py_NewRef(sb));
    PyObject *bits = PyLong_FromLongLong(SEQ_WINDOW);
    PyObject *top = bits == NULL ? NULL : PyNumber_Lshift(one, bits);
    Py_XDECREF(bits);
    if (top == NULL) return NULL;
    Py_XSETREF(seq_mask, PyNumber_Subtract(top, one));
    Py_DECREF(top);
    if (seq_mask == NULL) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "Give the module the window's classes and constants (pipeline.speed does)."},
    {"add", (PyCFunction)(void (*)(void))add, METH_FASTCALL, "CellSpeedWindow.add, in C."},
    {"add_pings", (PyCFunction)(void (*)(void))add_pings, METH_FASTCALL, "A record's pings into their windows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pipeline._window", NULL, -1, methods};

PyMODINIT_FUNC PyInit__window(void) {
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    NAME(s_seen, "seen");
    NAME(s_buckets, "buckets");
    NAME(s_closed, "_closed");
    NAME(s_added, "added");
    NAME(s_wake_at, "wake_at");
    NAME(s_hwm, "hwm");
    NAME(s_mask, "mask");
    NAME(s_last_seen, "last_seen");
    NAME(s_n, "n");
    NAME(s_total, "total");
    NAME(s_hist, "hist");
    NAME(s_devices, "devices");
    NAME(s_add, "add");
    NAME(s_accept, "accept");
    NAME(k_cell, "cell");
    NAME(k_device_id, "device_id");
    NAME(k_seq, "seq");
    NAME(k_ts, "ts");
    NAME(k_speed, "speed_mps");
    NAME(k_heading, "heading_deg");
    NAME(k_state, "state");
    NAME(s_parked, "parked");
#undef NAME
    if ((one = PyLong_FromLong(1)) == NULL || (zero = PyLong_FromLong(0)) == NULL ||
        (zero_f = PyFloat_FromDouble(0.0)) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
