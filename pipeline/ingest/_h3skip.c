/* pipeline.ingest._fastpings, H3 calls skipped exactly: a ping inside the previous ping's cell
 * has that cell.
 *
 * A phone's pings are ~60 m apart and a res-9 cell is ~350 m across, so most pings of a batch
 * fall in the cell of the ping before. Whether they do is decided without H3: an H3 cell that
 * lies on one icosahedron face is the inverse gnomonic image of a planar hexagon — a convex
 * spherical polygon whose edges are great-circle arcs between its boundary vertices — and
 * ``latlng_to_cell`` gives that cell for every point inside it (the point's face is the one
 * the whole cell lies on, its projection falls inside the planar hexagon). So a point p (unit
 * vector) with p.n_i > CELL_MARGIN for each edge's inward unit normal n_i is in the cell, by
 * at least CELL_MARGIN radians (1.3 m): far beyond float error, both ours (~1e-12 rad) and
 * H3's own (at most ~1.5e-8 rad, where acos(1 - d^2/2) gives a point's distance from a face
 * centre). Pentagons and cells on more than one face (their boundary bends at the face edge)
 * are never used. Anything not inside by the margin is keyed by H3 as before.
 *
 * The normals come from h3-py's ``cell_to_boundary`` (~4 us a cell, in Python) and are kept in
 * a table for the process (160 bytes a slot, twice as many slots as cells): a cell's geometry is
 * made at the second consecutive ping that H3 puts in it, so a trajectory that only crosses a
 * cell never pays for it. */
#include "_fastpings.h"
/* h3capi.h's latlng_to_cell is a static pointer that load_h3() fills, one per file that includes it:
 * this file is the module's only one, and calls both */
#include "../h3capi.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#define CELL_SLOTS_MIN 4096u
#define CELL_SLOTS_MAX (1u << 18) /* 131072 cells at the 1/2 load, ~40 MB; a city is ~6k cells */
#define CELL_MARGIN 2e-7
#define DEG2RAD 0.017453292519943295

typedef struct {
    uint64_t cell; /* 0: empty slot */
    int usable;    /* 0: a pentagon, on several faces, or too small for the margin */
    CellShape shape;
} CellSlot;

/* Open addressing (linear probing, at most half full, never a removal: it grows, and at
 * CELL_SLOTS_MAX is emptied whole). A table that evicts on a collision (the two-way one this
 * replaced) thrashes: a city's few thousand cells left ~100 sets of 3+ cells sharing two slots,
 * and their busiest cells had their shape made again (h3-py, in Python) every few pings. */
static CellSlot *cell_slots = NULL;
static size_t cell_mask = 0, cell_used = 0;
static int cell_shift = 64;
static unsigned long long cells_skipped = 0, cells_h3 = 0, shapes_made = 0; /* for cell_stats() */
static PyObject *cell_to_boundary_fn = NULL, *cell_faces_fn = NULL;

/* A cell's home slot, by a 64-bit mix: the cells of one city differ only in a few digits in
 * the middle of their index. */
static inline size_t cell_home(uint64_t cell) {
    uint64_t h = cell;
    h = (h ^ (h >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    h = (h ^ (h >> 27)) * UINT64_C(0x94D049BB133111EB);
    h ^= h >> 31;
    return (size_t)(h >> cell_shift);
}

static int cell_alloc(size_t cap) {
    CellSlot *t = PyMem_RawCalloc(cap, sizeof(CellSlot)); /* pages touched as cells come */
    if (t == NULL) return -1;
    cell_slots = t;
    cell_mask = cap - 1;
    int bits = 0;
    while (((size_t)1 << bits) < cap) bits++;
    cell_shift = 64 - bits;
    return 0;
}

/* The cell's slot, or NULL. */
static inline CellSlot *cell_find(uint64_t cell) {
    for (size_t i = cell_home(cell); cell_slots[i].cell != 0; i = (i + 1) & cell_mask)
        if (cell_slots[i].cell == cell) return &cell_slots[i];
    return NULL;
}

/* *made (a cell not in the table) stored: in a table twice as big when it would be more than
 * half full, or, at CELL_SLOTS_MAX (or with no memory to grow), an emptied one. Returns its slot. */
static CellSlot *cell_store(const CellSlot *made) {
    if ((cell_used + 1) * 2 > cell_mask + 1) {
        CellSlot *old = cell_slots;
        size_t cap = cell_mask + 1;
        if (cap < CELL_SLOTS_MAX && cell_alloc(cap * 2) == 0) {
            for (size_t i = 0; i < cap; i++) {
                if (old[i].cell == 0) continue;
                size_t j = cell_home(old[i].cell);
                while (cell_slots[j].cell != 0) j = (j + 1) & cell_mask;
                cell_slots[j] = old[i];
            }
            PyMem_RawFree(old);
        } else {
            memset(cell_slots, 0, cap * sizeof(CellSlot));
            cell_used = 0;
        }
    }
    size_t i = cell_home(made->cell);
    while (cell_slots[i].cell != 0) i = (i + 1) & cell_mask;
    cell_slots[i] = *made;
    cell_used++;
    return &cell_slots[i];
}

static inline void unit_vector(double lat, double lon, double out[3]) {
    double la = lat * DEG2RAD, lo = lon * DEG2RAD, cl = cos(la);
    out[0] = cl * cos(lo);
    out[1] = cl * sin(lo);
    out[2] = sin(la);
}

static inline int in_shape(const CellShape *s, const double p[3]) {
    for (int i = 0; i < CELL_SIDES; i++)
        if (!(p[0] * s->n[i][0] + p[1] * s->n[i][1] + p[2] * s->n[i][2] > CELL_MARGIN)) return 0;
    return 1;
}

/* A cell's slot made from h3-py (boundary, faces) into *slot, not yet the table's (h3-py's
 * Python code may let another thread in, which may store cells): 0 done (slot->usable says if it
 * may be used), -1 a Python error. */
static int cell_shape_make(uint64_t cell, CellSlot *slot) {
    slot->cell = 0;
    slot->usable = 0;
    PyObject *arg = PyLong_FromUnsignedLongLong((unsigned long long)cell);
    if (arg == NULL) return -1;
    PyObject *faces = PyObject_CallOneArg(cell_faces_fn, arg);
    PyObject *boundary = faces == NULL ? NULL : PyObject_CallOneArg(cell_to_boundary_fn, arg);
    Py_DECREF(arg);
    if (boundary == NULL) {
        Py_XDECREF(faces);
        return -1;
    }
    Py_ssize_t nfaces = PyObject_Length(faces), nv = PyObject_Length(boundary);
    int rc = -1;
    if (nfaces < 0 || nv < 0) goto done;
    rc = 0;
    slot->cell = cell;
    if (nfaces != 1 || nv != CELL_SIDES) goto done; /* on two faces (bent), or a pentagon */
    double v[CELL_SIDES][3], c[3] = {0, 0, 0};
    for (Py_ssize_t i = 0; i < nv; i++) {
        PyObject *ll = PySequence_GetItem(boundary, i);
        if (ll == NULL) goto error;
        PyObject *la = PySequence_GetItem(ll, 0), *lo = PySequence_GetItem(ll, 1);
        Py_DECREF(ll);
        double lat = la == NULL ? -1.0 : PyFloat_AsDouble(la), lon = lo == NULL ? -1.0 : PyFloat_AsDouble(lo);
        Py_XDECREF(la);
        Py_XDECREF(lo);
        if (PyErr_Occurred()) goto error;
        unit_vector(lat, lon, v[i]);
        for (int k = 0; k < 3; k++) c[k] += v[i][k];
    }
    for (int i = 0; i < CELL_SIDES; i++) {
        const double *a = v[i], *b = v[(i + 1) % CELL_SIDES];
        double *n = slot->shape.n[i];
        n[0] = a[1] * b[2] - a[2] * b[1];
        n[1] = a[2] * b[0] - a[0] * b[2];
        n[2] = a[0] * b[1] - a[1] * b[0];
        double len = sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
        double side = n[0] * c[0] + n[1] * c[1] + n[2] * c[2];
        if (!(len > 0.0)) goto done;
        if (side < 0) len = -len; /* inward: the vertices' mean is inside a convex cell */
        for (int k = 0; k < 3; k++) n[k] /= len;
    }
    double cl = sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2]);
    for (int k = 0; k < 3; k++) c[k] /= cl;
    /* every vertex on the inner side of the other edges, the centre well inside: convex, and big
     * enough for the margin to leave room (never at res 15, whose cells are ~0.5 m across) */
    for (int i = 0; i < CELL_SIDES; i++) {
        const double *n = slot->shape.n[i];
        if (!(c[0] * n[0] + c[1] * n[1] + c[2] * n[2] > 8 * CELL_MARGIN)) goto done;
        for (int j = 0; j < CELL_SIDES; j++)
            if (j != i && j != (i + 1) % CELL_SIDES && !(v[j][0] * n[0] + v[j][1] * n[1] + v[j][2] * n[2] > 0)) goto done;
    }
    slot->usable = 1;
    goto done;
error:
    rc = -1;
    slot->cell = 0;
done:
    Py_DECREF(faces);
    Py_DECREF(boundary);
    return rc;
}

/* The res cell of (lat, lon): the last cell's if the point is surely inside it, else H3's.
 * 1 with a Python error set when H3 fails (as latlng_to_cell). */
uint64_t cell_of(double lat, double lon, int res, LastCell *last) {
    if (last->usable) {
        double p[3];
        unit_vector(lat, lon, p);
        if (in_shape(&last->shape, p)) {
            cells_skipped++;
            return last->cell;
        }
    }
    cells_h3++;
    uint64_t cell = latlng_to_cell(lat, lon, res, 0);
    if (cell == 1 && PyErr_Occurred()) return 1;
    if (cell == last->cell) {
        /* a second ping in a cell without a shape yet: make it (once per cell for the process) */
        if (!last->usable && cell_slots != NULL) {
            if (cell_find(cell) == NULL) {
                CellSlot made;
                /* the shape only saves H3 calls: a failure to make it (h3-py raising, no memory)
                 * leaves this cell to H3 rather than failing the request */
                if (cell_shape_make(cell, &made) < 0) {
                    PyErr_Clear();
                    return cell;
                }
                shapes_made++;
                if (cell_find(cell) == NULL) cell_store(&made); /* another thread may have, meanwhile */
                if (made.usable) {
                    last->usable = 1;
                    last->shape = made.shape;
                }
            }
        }
        return cell;
    }
    last->cell = cell;
    last->usable = 0;
    if (cell_slots != NULL) {
        CellSlot *slot = cell_find(cell);
        if (slot != NULL && slot->usable) {
            last->usable = 1;
            last->shape = slot->shape; /* a copy: a later cell may take the slot during this scan */
        }
    }
    return cell;
}

/* The res cell of (lat, lon) given a hint, a cell it is likely in (the stream side passes the
 * device's previous ping's cell): the hint when its shape is known and the point surely inside
 * it, else H3's. Any hint is safe, a stale or foreign one included: it is only ever confirmed,
 * never assumed. As in cell_of, a cell's shape is made the second time H3 confirms it as a hint. */
uint64_t cell_hinted(double lat, double lon, int res, uint64_t hint) {
    if (hint != 0 && cell_slots != NULL && (int)((hint >> 52) & 0xF) == res) {
        CellSlot *slot = cell_find(hint);
        if (slot != NULL && slot->usable) {
            double p[3];
            unit_vector(lat, lon, p);
            if (in_shape(&slot->shape, p)) {
                cells_skipped++;
                return hint;
            }
            cells_h3++;
            return latlng_to_cell(lat, lon, res, 0); /* no shape to make: the hint's is known */
        }
    }
    LastCell last;
    last.cell = hint;
    last.usable = 0; /* its shape is not read */
    return cell_of(lat, lon, res, &last);
}

/* cell_hinted(lat, lon, res, hint) -> int: for the unit tests (the stream side calls it from C) */
PyObject *cell_hinted_py(PyObject *Py_UNUSED(self), PyObject *args) {
    double lat, lon;
    int res;
    unsigned long long hint;
    if (!PyArg_ParseTuple(args, "ddiK", &lat, &lon, &res, &hint)) return NULL;
    uint64_t cell = cell_hinted(lat, lon, res, (uint64_t)hint);
    if (cell == 1 && PyErr_Occurred()) return NULL;
    return PyLong_FromUnsignedLongLong((unsigned long long)cell);
}

PyObject *cell_stats(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    return Py_BuildValue("(KKK)", cells_skipped, cells_h3, shapes_made);
}

int h3skip_init(void) {
    if (load_h3() < 0) return -1;
    PyObject *h3int = PyImport_ImportModule("h3.api.basic_int");
    if (h3int == NULL) return -1;
    cell_to_boundary_fn = PyObject_GetAttrString(h3int, "cell_to_boundary");
    cell_faces_fn = PyObject_GetAttrString(h3int, "get_icosahedron_faces");
    Py_DECREF(h3int);
    if (cell_to_boundary_fn == NULL || cell_faces_fn == NULL) return -1;
    if (cell_alloc(CELL_SLOTS_MIN) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}
