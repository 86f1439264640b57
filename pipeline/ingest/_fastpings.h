/* What the C files of pipeline.ingest._fastpings share: one extension module built from
 * _fastpings.c (the ping scan, the module), _h3skip.c (H3 calls skipped inside the previous
 * ping's cell) and _batchwire.c (Kafka record batches, CRC32C).
 *
 * Everything named here is hidden: the linker resolves it inside the module's .so, never against
 * a like-named symbol of another loaded library, and the module exports only PyInit__fastpings. */
#ifndef TRAVERZ_FASTPINGS_H
#define TRAVERZ_FASTPINGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define FP_HIDDEN __attribute__((visibility("hidden")))
#else
#define FP_HIDDEN
#endif

/* ---- _h3skip.c ---- */

#define CELL_SIDES 6

typedef struct {
    double n[CELL_SIDES][3]; /* inward unit normals of the edges' great circles */
} CellShape;

/* The cell of the pings one scan has keyed last, and its shape when it may be used. */
typedef struct {
    uint64_t cell; /* 0: none yet */
    int usable;
    CellShape shape;
} LastCell;

/* h3-py's latlng_to_cell and cell geometry functions, the table of cell shapes: 0, or -1 with a
 * Python error set. The module's init calls it once. */
FP_HIDDEN int h3skip_init(void);

/* The res cell of (lat, lon): the last cell's if the point is surely inside it, else H3's.
 * 1 with a Python error set when H3 fails (as latlng_to_cell). */
FP_HIDDEN uint64_t cell_of(double lat, double lon, int res, LastCell *last);

/* The res cell of (lat, lon), ``hint`` confirmed without H3 when the point is surely inside it
 * (any hint is safe; 0: none). 1 with a Python error set when H3 fails. */
FP_HIDDEN uint64_t cell_hinted(double lat, double lon, int res, uint64_t hint);
FP_HIDDEN PyObject *cell_hinted_py(PyObject *self, PyObject *args);

/* cell_stats() -> (pings keyed by the previous ping's cell, pings keyed by H3, cell shapes made) */
FP_HIDDEN PyObject *cell_stats(PyObject *self, PyObject *args);

/* ---- _batchwire.c ---- */

/* The CRC32C table, and whether the CPU has SSE4.2's crc32 instruction. The module's init calls it
 * once, before any batch is built. */
FP_HIDDEN void crc32c_init(void);

/* record_batch(rows, timestamp_ms, producer_id, producer_epoch, base_sequence) -> bytes */
FP_HIDDEN PyObject *record_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* crc32c(data, /, soft=False) -> int */
FP_HIDDEN PyObject *crc32c_py(PyObject *self, PyObject *args, PyObject *kwargs);
/* crc32c_calls() -> (sse4.2, table) */
FP_HIDDEN PyObject *crc32c_calls_py(PyObject *self, PyObject *args);

#endif
