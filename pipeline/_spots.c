/* The hot loops of pipeline/detect/spots.py in C: see (every ping near a stop), the history
 * scan of _usual and the cells a spot watches (_cells). spots.py holds the rules and the
 * Python twins these must equal: the same IEEE expressions in the same order, the same libm
 * calls CPython's math module makes (radians is x * (pi / 180), x ** 2 is pow(x, 2.0), % is
 * Python's float remainder), h3-py's own compiled latlng_to_cell (h3capi.h); the equivalence
 * tests (tests/unit/test_spots_equiv.py) replay calls against the original module. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#include <structmember.h>

#include "h3capi.h"

/* no fused multiply-add: a*b + c must round twice, as Python's floats do */
#pragma GCC optimize("fp-contract=off")

static const double DEG_TO_RAD = Py_MATH_PI / 180.0; /* CPython's math.radians and degrees */
static const double RAD_TO_DEG = 180.0 / Py_MATH_PI;

/* spots.py's constants, from bind() */
static double PASS_MPS, SAME_DIRECTION_DEG, AHEAD_LO, AHEAD_HI, BEHIND_M, ASIDE_M, M_PER_DEG;
static double USUAL_M, USUAL_DEG, HISTORY_S, USUAL_DLAT, TWO_R, EARTH_RADIUS_M;
static Py_ssize_t USUAL_MIN;
static int CELL_RES, bound = 0;
#define MAX_SAMPLES 16
static double SAMPLE_M[MAX_SAMPLES];
static Py_ssize_t n_samples;


/* Python's float %: the sign of the divisor */
static double py_mod(double x, double y) {
    double mod = fmod(x, y);
    if (mod != 0.0) {
        if ((y < 0) != (mod < 0)) mod += y;
    } else {
        mod = copysign(0.0, y);
    }
    return mod;
}

/* CPython's m_atan2: its special cases before libm's */
static double py_atan2(double y, double x) {
    if (isnan(x) || isnan(y)) return Py_NAN;
    if (isinf(y)) {
        if (isinf(x)) {
            if (copysign(1., x) == 1.) return copysign(0.25 * Py_MATH_PI, y);
            return copysign(0.75 * Py_MATH_PI, y);
        }
        return copysign(0.5 * Py_MATH_PI, y);
    }
    if (isinf(x) || y == 0.) {
        if (copysign(1., x) == 1.) return copysign(0., y);
        return copysign(Py_MATH_PI, y);
    }
    return atan2(y, x);
}

/* math.asin: a domain error raises */
static int py_asin(double x, double *out) {
    *out = asin(x);
    if (isnan(*out) && !isnan(x)) {
        PyErr_SetString(PyExc_ValueError, "math domain error");
        return -1;
    }
    return 0;
}

/* geo.angle_diff */
static double angle_diff(double a, double b) {
    double d = py_mod(fabs(a - b), 360.0);
    return d > 180.0 ? 360.0 - d : d;
}

/* Spot's slots, read in place: Spot is a slots dataclass, each field a member at an offset of
 * the object (bind() finds them). Anything else than a Spot goes through getattr. */
static PyTypeObject *Spot = NULL;
enum { F_DEVICE, F_SINCE_TS, F_PASSERS, F_BEHIND, F_HEADING, F_LAT, F_LON, F_COS_LAT, F_SIN_H, F_COS_H, N_FIELDS };
static PyObject *field_names[N_FIELDS];
static Py_ssize_t field_offsets[N_FIELDS];

/* a new reference to field f of spot, NULL with an exception if unset */
static PyObject *field(PyObject *spot, int f) {
    if (Py_IS_TYPE(spot, Spot)) {
        PyObject *v = *(PyObject **)((char *)spot + field_offsets[f]);
        if (v != NULL) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttr(spot, field_names[f]);
}

static int as_double(PyObject *v, double *out) {
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 0;
    }
    *out = PyFloat_AsDouble(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int field_double(PyObject *spot, int f, double *out) {
    PyObject *v = field(spot, f);
    if (v == NULL) return -1;
    int rc = as_double(v, out);
    Py_DECREF(v);
    return rc;
}

static int item_double(PyObject *t, Py_ssize_t i, double *out) { return as_double(PyTuple_GET_ITEM(t, i), out); }

#define NEED_BIND \
    if (!bound) return PyErr_Format(PyExc_RuntimeError, "_spots.bind was not called")

/* Spots.see on by_cell[cell] (a dict): 0, or -1 with an exception. Exported as the capsule
 * pipeline._spots.see_c, whose pointer pipeline/_movers.c calls as a SeeCell (its typedef there
 * must stay this signature). */
#define SEE_CAPSULE "pipeline._spots.see_c"
static int see_cell(PyObject *by_cell, PyObject *cell, PyObject *device, double ts, double lat, double lon,
                    double speed, double heading) {
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "_spots.bind was not called");
        return -1;
    }
    PyObject *spots = PyDict_GetItemWithError(by_cell, cell);
    if (spots == NULL) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, cell);
        return -1;
    }
    if (!PyDict_Check(spots)) {
        PyErr_SetString(PyExc_TypeError, "by_cell: dicts of spots");
        return -1;
    }
    Py_INCREF(spots);
    Py_ssize_t pos = 0;
    PyObject *key, *spot, *passers = NULL;
    while (PyDict_Next(spots, &pos, &key, &spot)) { /* only sets change below, never the dict */
        double since, sh, slat, slon, cos_lat, sin_h, cos_h;
        if (field_double(spot, F_SINCE_TS, &since) < 0) goto fail;
        if (ts <= since) continue;
        PyObject *sdev = field(spot, F_DEVICE);
        if (sdev == NULL) goto fail;
        int same = PyObject_RichCompareBool(sdev, device, Py_EQ);
        Py_DECREF(sdev);
        if (same < 0) goto fail;
        if (same) continue;
        passers = field(spot, F_PASSERS);
        if (passers == NULL) goto fail;
        int passed = PySequence_Contains(passers, device);
        if (passed < 0) goto fail;
        if (passed) goto next;
        if (field_double(spot, F_HEADING, &sh) < 0) goto fail;
        if (angle_diff(heading, sh) > SAME_DIRECTION_DEG) goto next;
        if (field_double(spot, F_LAT, &slat) < 0 || field_double(spot, F_LON, &slon) < 0 ||
            field_double(spot, F_COS_LAT, &cos_lat) < 0 || field_double(spot, F_SIN_H, &sin_h) < 0 ||
            field_double(spot, F_COS_H, &cos_h) < 0)
            goto fail;
        double dx = (lon - slon) * M_PER_DEG * cos_lat; /* spots.offset */
        double dy = (lat - slat) * M_PER_DEG;
        if (fabs(dx * cos_h - dy * sin_h) > ASIDE_M) goto next;
        double along = dx * sin_h + dy * cos_h;
        int behind_now = -BEHIND_M <= along && along < 0.0;
        if (behind_now || (AHEAD_LO <= along && along <= AHEAD_HI && speed >= PASS_MPS)) {
            PyObject *behind = field(spot, F_BEHIND);
            if (behind == NULL) goto fail;
            int rc;
            if (behind_now) {
                rc = PySet_Add(behind, device);
            } else {
                rc = PySequence_Contains(behind, device);
                if (rc > 0) rc = PySet_Add(passers, device);
            }
            Py_DECREF(behind);
            if (rc < 0) goto fail;
        }
    next:
        Py_CLEAR(passers);
    }
    Py_DECREF(spots);
    return 0;
fail:
    Py_XDECREF(passers);
    Py_DECREF(spots);
    return -1;
}

/* see(by_cell, cell, device, ts, lat, lon, speed, heading): Spots.see */
static PyObject *see(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    double ts, lat, lon, speed, heading;
    if (nargs != 8) return PyErr_Format(PyExc_TypeError, "see takes 8 arguments (%zd given)", nargs);
    NEED_BIND;
    if (!PyDict_Check(args[0])) return PyErr_Format(PyExc_TypeError, "by_cell: a dict");
    if (as_double(args[3], &ts) < 0 || as_double(args[4], &lat) < 0 || as_double(args[5], &lon) < 0 ||
        as_double(args[6], &speed) < 0 || as_double(args[7], &heading) < 0)
        return NULL;
    if (see_cell(args[0], args[1], args[2], ts, lat, lon, speed, heading) < 0) return NULL;
    Py_RETURN_NONE;
}

typedef struct {
    double since, turn;
    PyObject *device; /* borrowed: the history entry holds it */
} Other;

/* usual(history, disk, device, lat, lon, heading, since_ts) -> bool: Spots._usual's scan */
static PyObject *usual(PyObject *self, PyObject *args) {
    PyObject *history, *disk, *device;
    double lat, lon, heading, since_ts;
    if (!PyArg_ParseTuple(args, "O!OOdddd", &PyDict_Type, &history, &disk, &device, &lat, &lon, &heading, &since_ts))
        return NULL;
    NEED_BIND;
    PyObject *cells = PySequence_Fast(disk, "disk: a sequence of cells");
    if (cells == NULL) return NULL;
    double first = since_ts, oldest = since_ts - HISTORY_S;
    double lat_lo = lat - USUAL_DLAT, lat_hi = lat + USUAL_DLAT;
    double p2 = DEG_TO_RAD * lat, cos_p2 = cos(p2);
    Other small[64], *others = small;
    Py_ssize_t n_others = 0, cap = 64;
    PyObject *seen = NULL, *result = NULL;
    for (Py_ssize_t ci = 0; ci < PySequence_Fast_GET_SIZE(cells); ci++) {
        PyObject *entries = PyDict_GetItemWithError(history, PySequence_Fast_GET_ITEM(cells, ci));
        if (entries == NULL) {
            if (PyErr_Occurred()) goto done;
            continue;
        }
        if (!PyList_Check(entries)) {
            PyErr_SetString(PyExc_TypeError, "history: lists of entries");
            goto done;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(entries); i++) {
            PyObject *e = PyList_GET_ITEM(entries, i);
            if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 5) {
                PyErr_SetString(PyExc_TypeError, "history: (since_ts, lat, lon, heading, device) entries");
                goto done;
            }
            double h_since, h_lat, h_lon, h_heading;
            if (item_double(e, 0, &h_since) < 0 || item_double(e, 1, &h_lat) < 0) goto done;
            if (h_since < oldest || !(lat_lo <= h_lat && h_lat <= lat_hi)) continue;
            if (item_double(e, 2, &h_lon) < 0) goto done;
            /* geo.distance_m(h_lat, h_lon, lat, lon) */
            double p1 = DEG_TO_RAD * h_lat;
            double dp = p2 - p1;
            double dl = DEG_TO_RAD * (lon - h_lon);
            double a = pow(sin(dp / 2), 2.0) + cos(p1) * cos_p2 * pow(sin(dl / 2), 2.0);
            double root = sqrt(a);
            if (!(root < 1.0)) root = 1.0; /* min(1.0, root) */
            if (TWO_R * asin(root) > USUAL_M) continue;
            PyObject *h_device = PyTuple_GET_ITEM(e, 4);
            int own = PyObject_RichCompareBool(h_device, device, Py_EQ);
            if (own < 0) goto done;
            if (own) {
                if (h_since < first) first = h_since; /* min(first, h_since) */
                continue;
            }
            if (item_double(e, 3, &h_heading) < 0) goto done;
            if (n_others == cap) {
                Other *grown = PyMem_Malloc(sizeof(Other) * (size_t)cap * 2);
                if (grown == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
                memcpy(grown, others, sizeof(Other) * (size_t)cap);
                if (others != small) PyMem_Free(others);
                others = grown;
                cap *= 2;
            }
            others[n_others++] = (Other){h_since, angle_diff(h_heading, heading), h_device};
        }
    }
    seen = PySet_New(NULL);
    if (seen == NULL) goto done;
    for (Py_ssize_t i = 0; i < n_others; i++) {
        Other *o = &others[i];
        if (o->turn <= USUAL_DEG && (o->since < first || o->turn > SAME_DIRECTION_DEG) &&
            PySet_Add(seen, o->device) < 0)
            goto done;
    }
    result = PyBool_FromLong(PySet_GET_SIZE(seen) >= USUAL_MIN);
done:
    Py_XDECREF(seen);
    Py_DECREF(cells);
    if (others != small) PyMem_Free(others);
    return result;
}

static PyObject *cell_str(uint64_t h) {
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%llx", (unsigned long long)h); /* h3-py's int_to_str */
    return PyUnicode_FromStringAndSize(buf, n);
}

/* cells(lat, lon, heading) -> tuple: _cells, the cells of the sample points along the heading */
static PyObject *cells(PyObject *self, PyObject *args) {
    double lat, lon, heading;
    if (!PyArg_ParseTuple(args, "ddd", &lat, &lon, &heading)) return NULL;
    NEED_BIND;
    uint64_t found[MAX_SAMPLES];
    Py_ssize_t n = 0;
    double p1 = DEG_TO_RAD * lat, l1 = DEG_TO_RAD * lon;
    for (Py_ssize_t i = 0; i < n_samples; i++) {
        double d_m = SAMPLE_M[i], plat = lat, plon = lon;
        if (d_m != 0.0) { /* geo.destination(lat, lon, bearing, abs(d_m)) */
            double d = fabs(d_m) / EARTH_RADIUS_M;
            double b = DEG_TO_RAD * (d_m > 0 ? heading : heading + 180.0);
            double p2, l2;
            if (py_asin(sin(p1) * cos(d) + cos(p1) * sin(d) * cos(b), &p2) < 0) return NULL;
            l2 = l1 + py_atan2(sin(b) * sin(d) * cos(p1), cos(d) - sin(p1) * sin(p2));
            plat = RAD_TO_DEG * p2;
            plon = py_mod(RAD_TO_DEG * l2 + 540.0, 360.0) - 180.0;
        }
        uint64_t h = latlng_to_cell(plat, plon, CELL_RES, 0);
        if (h == 1 && PyErr_Occurred()) return NULL;
        int dup = 0;
        for (Py_ssize_t j = 0; j < n; j++) dup |= found[j] == h;
        if (!dup) found[n++] = h;
    }
    PyObject *out = PyTuple_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *s = cell_str(found[j]);
        if (s == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, j, s);
    }
    return out;
}

/* bind(Spot, sample_m, pass_mps, same_direction_deg, ahead_lo, ahead_hi, behind_m, aside_m, m_per_deg,
 *      usual_m, usual_deg, usual_min, history_s, usual_dlat, earth_radius_m, cell_res) */
static PyObject *bind(PyObject *self, PyObject *args) {
    PyObject *spot_type, *samples;
    if (!PyArg_ParseTuple(args, "O!O!dddddddddndddi", &PyType_Type, &spot_type, &PyTuple_Type, &samples, &PASS_MPS, &SAME_DIRECTION_DEG,
                          &AHEAD_LO, &AHEAD_HI, &BEHIND_M, &ASIDE_M, &M_PER_DEG, &USUAL_M, &USUAL_DEG, &USUAL_MIN,
                          &HISTORY_S, &USUAL_DLAT, &EARTH_RADIUS_M, &CELL_RES))
        return NULL;
    n_samples = PyTuple_GET_SIZE(samples);
    if (n_samples > MAX_SAMPLES) return PyErr_Format(PyExc_ValueError, "at most %d sample points", MAX_SAMPLES);
    for (Py_ssize_t i = 0; i < n_samples; i++) {
        SAMPLE_M[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(samples, i));
        if (SAMPLE_M[i] == -1.0 && PyErr_Occurred()) return NULL;
    }
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *descr = PyObject_GetAttr(spot_type, field_names[f]);
        if (descr == NULL) return NULL;
        int slot = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                   ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
        if (slot) field_offsets[f] = ((PyMemberDescrObject *)descr)->d_member->offset;
        Py_DECREF(descr);
        if (!slot) return PyErr_Format(PyExc_TypeError, "Spot.%U: not a slot", field_names[f]);
    }
    Py_INCREF(spot_type);
    Py_XSETREF(Spot, (PyTypeObject *)spot_type);
    TWO_R = 2 * EARTH_RADIUS_M; /* geo.distance_m's 2 * EARTH_RADIUS_M * asin(...) */
    bound = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "Give the module spots.py's constants (spots.py does)."},
    {"see", (PyCFunction)(void (*)(void))see, METH_FASTCALL, "Spots.see(cell, ...) with Spots.by_cell first."},
    {"usual", usual, METH_VARARGS, "Spots._usual's history scan."},
    {"cells", cells, METH_VARARGS, "The cells a spot watches (spots._cells)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pipeline._spots", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__spots(void) {
    if (load_h3() < 0) return NULL;
    static const char *names[N_FIELDS] = {"device", "since_ts", "passers", "behind", "heading",
                                          "lat",    "lon",      "cos_lat", "sin_h",  "cos_h"};
    for (int f = 0; f < N_FIELDS; f++)
        if ((field_names[f] = PyUnicode_InternFromString(names[f])) == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    /* see_cell for pipeline/_movers.c's glide, which sees a watched cell's pings without a Python
     * call: a capsule, so the two extensions stay separate (PyCapsule_Import) */
    PyObject *c = PyCapsule_New((void *)see_cell, SEE_CAPSULE, NULL);
    if (c == NULL || PyModule_AddObject(m, "see_c", c) < 0) {
        Py_XDECREF(c);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
