/* Avro binary bodies read and written in C, driven by a schema "program".
 *
 * The program is a tree of Python tuples built once per schema by
 * `schemas/_impl/compiled.py` (`_program`); this module only interprets it.
 * It does exactly what the generated Python readers and writers there do
 * (the same values, the same bytes, an exception for every malformed body),
 * about five times faster: the hot path of every processor decodes and
 * encodes events millions of times. `tests/schemas/test_compiled.py` holds
 * both implementations to fastavro's results for every event type.
 *
 * Node forms (see `_program`):
 *   int code                      primitive: NULL BOOLEAN LONG FLOAT DOUBLE STRING BYTES
 *   (RECORD, names, progs, modes, defaults)
 *   (ENUM, symbols, index_by_symbol)
 *   (ARRAY, items) / (MAP, values)
 *   (UNION, branches, null_index, other_index, other)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { NULL_T = 0, BOOLEAN_T = 1, LONG_T = 2, FLOAT_T = 3, DOUBLE_T = 4, STRING_T = 5,
       BYTES_T = 6, RECORD_T = 7, ENUM_T = 8, ARRAY_T = 9, MAP_T = 10, UNION_T = 11 };
enum { FIELD_REQUIRED = 0, FIELD_DEFAULT = 1, FIELD_NULLABLE = 2 };

#define MAX_DEPTH 64

/* ---- reading ------------------------------------------------------------------ */

typedef struct {
    const unsigned char *buf;
    Py_ssize_t size;
    Py_ssize_t pos;
} Reader;

static int eof(Reader *r, Py_ssize_t need) {
    PyErr_Format(PyExc_EOFError, "expected %zd bytes at byte %zd of %zd", need, r->pos, r->size);
    return -1;
}

static int read_long(Reader *r, int64_t *out) {
    uint64_t n = 0;
    int shift = 0;
    for (;;) {
        if (r->pos >= r->size) return eof(r, 1);
        unsigned char b = r->buf[r->pos++];
        if (shift == 63 && (b & 0x7e)) {
            PyErr_SetString(PyExc_ValueError, "varint is longer than 64 bits");
            return -1;
        }
        n |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) break;
        shift += 7;
        if (shift > 63) {
            PyErr_SetString(PyExc_ValueError, "varint is longer than 10 bytes");
            return -1;
        }
    }
    *out = (int64_t)(n >> 1) ^ -(int64_t)(n & 1);
    return 0;
}

static int read_length(Reader *r, Py_ssize_t *out) {
    int64_t n;
    if (read_long(r, &n) < 0) return -1;
    if (n < 0 || n > r->size - r->pos) return eof(r, (Py_ssize_t)n);
    *out = (Py_ssize_t)n;
    return 0;
}

static PyObject *read_value(PyObject *prog, Reader *r, int depth);

static PyObject *read_record(PyObject *prog, Reader *r, int depth) {
    PyObject *names = PyTuple_GET_ITEM(prog, 1);
    PyObject *progs = PyTuple_GET_ITEM(prog, 2);
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    /* sized once: a 26-field record would otherwise be resized three times */
    PyObject *record = _PyDict_NewPresized(n);
    if (record == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = read_value(PyTuple_GET_ITEM(progs, i), r, depth + 1);
        if (value == NULL || PyDict_SetItem(record, PyTuple_GET_ITEM(names, i), value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(record);
            return NULL;
        }
        Py_DECREF(value);
    }
    return record;
}

/* Blocks of items (arrays) or key/value pairs (maps) until a zero count. */
static PyObject *read_blocks(PyObject *prog, Reader *r, int depth, int is_map) {
    PyObject *items = PyTuple_GET_ITEM(prog, 1);
    PyObject *out = is_map ? PyDict_New() : PyList_New(0);
    if (out == NULL) return NULL;
    for (;;) {
        int64_t count;
        if (read_long(r, &count) < 0) goto fail;
        if (count == 0) break;
        if (count < 0) {
            int64_t block_size;
            if (count == INT64_MIN) {
                PyErr_SetString(PyExc_ValueError, "block count out of range");
                goto fail;
            }
            count = -count;
            if (read_long(r, &block_size) < 0) goto fail;
        }
        /* A map entry takes at least a byte (its key's length), as does an item of any
         * primitive but null: a count beyond the bytes left is a corrupt body, not a
         * reason to loop. */
        if (count > r->size - r->pos
                && (is_map || (PyLong_CheckExact(items) && PyLong_AsLong(items) != NULL_T))) {
            eof(r, (Py_ssize_t)count);
            goto fail;
        }
        for (int64_t i = 0; i < count; i++) {
            if (is_map) {
                Py_ssize_t len;
                if (read_length(r, &len) < 0) goto fail;
                PyObject *key = PyUnicode_DecodeUTF8((const char *)r->buf + r->pos, len, NULL);
                if (key == NULL) goto fail;
                r->pos += len;
                PyObject *value = read_value(items, r, depth + 1);
                if (value == NULL) { Py_DECREF(key); goto fail; }
                int rc = PyDict_SetItem(out, key, value);
                Py_DECREF(key);
                Py_DECREF(value);
                if (rc < 0) goto fail;
            } else {
                PyObject *value = read_value(items, r, depth + 1);
                if (value == NULL) goto fail;
                int rc = PyList_Append(out, value);
                Py_DECREF(value);
                if (rc < 0) goto fail;
            }
        }
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *read_value(PyObject *prog, Reader *r, int depth) {
    if (depth > MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "schema nested too deeply");
        return NULL;
    }
    if (PyLong_CheckExact(prog)) {
        long code = PyLong_AsLong(prog);
        switch (code) {
        case NULL_T:
            Py_RETURN_NONE;
        case BOOLEAN_T:
            if (r->pos >= r->size) { eof(r, 1); return NULL; }
            return PyBool_FromLong(r->buf[r->pos++] != 0);
        case LONG_T: {
            int64_t v;
            if (read_long(r, &v) < 0) return NULL;
            return PyLong_FromLongLong(v);
        }
        case FLOAT_T:
        case DOUBLE_T: {
            Py_ssize_t width = code == FLOAT_T ? 4 : 8;
            if (r->size - r->pos < width) { eof(r, width); return NULL; }
            const char *at = (const char *)r->buf + r->pos;
            double v = width == 4 ? PyFloat_Unpack4(at, 1) : PyFloat_Unpack8(at, 1);
            if (v == -1.0 && PyErr_Occurred()) return NULL;
            r->pos += width;
            return PyFloat_FromDouble(v);
        }
        case STRING_T:
        case BYTES_T: {
            Py_ssize_t len;
            if (read_length(r, &len) < 0) return NULL;
            const char *start = (const char *)r->buf + r->pos;
            r->pos += len;
            return code == STRING_T ? PyUnicode_DecodeUTF8(start, len, NULL)
                                    : PyBytes_FromStringAndSize(start, len);
        }
        }
        PyErr_Format(PyExc_ValueError, "unknown primitive code %ld", code);
        return NULL;
    }
    switch (PyLong_AsLong(PyTuple_GET_ITEM(prog, 0))) {
    case RECORD_T:
        return read_record(prog, r, depth);
    case ENUM_T: {
        PyObject *symbols = PyTuple_GET_ITEM(prog, 1);
        int64_t i;
        if (read_long(r, &i) < 0) return NULL;
        if (i < 0) {
            PyErr_Format(PyExc_ValueError, "enum index %lld", (long long)i);
            return NULL;
        }
        if (i >= PyTuple_GET_SIZE(symbols)) {
            PyErr_Format(PyExc_IndexError, "enum index %lld out of range", (long long)i);
            return NULL;
        }
        PyObject *symbol = PyTuple_GET_ITEM(symbols, (Py_ssize_t)i);
        Py_INCREF(symbol);
        return symbol;
    }
    case ARRAY_T:
        return read_blocks(prog, r, depth, 0);
    case MAP_T:
        return read_blocks(prog, r, depth, 1);
    case UNION_T: {
        PyObject *branches = PyTuple_GET_ITEM(prog, 1);
        int64_t i;
        if (read_long(r, &i) < 0) return NULL;
        if (i < 0 || i >= PyTuple_GET_SIZE(branches)) {
            PyErr_Format(PyExc_ValueError, "union branch %lld out of range", (long long)i);
            return NULL;
        }
        return read_value(PyTuple_GET_ITEM(branches, (Py_ssize_t)i), r, depth + 1);
    }
    }
    PyErr_SetString(PyExc_ValueError, "malformed schema program");
    return NULL;
}

/* read(program, data, pos) -> (record, end) */
static PyObject *native_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "read(program, data, pos)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[2]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
    Reader r = {(const unsigned char *)view.buf, view.len, pos};
    PyObject *result = NULL;
    if (pos < 0 || pos > view.len) {
        PyErr_Format(PyExc_ValueError, "start %zd outside %zd bytes", pos, view.len);
    } else {
        PyObject *value = read_value(args[0], &r, 0);
        PyObject *end = value == NULL ? NULL : PyLong_FromSsize_t(r.pos);
        if (end != NULL) {
            result = PyTuple_Pack(2, value, end);
        }
        Py_XDECREF(value);
        Py_XDECREF(end);
    }
    PyBuffer_Release(&view);
    return result;
}

/* ---- writing ------------------------------------------------------------------ */

typedef struct {
    char *buf;
    Py_ssize_t len;
    Py_ssize_t cap;
    char small[512];
} Writer;

static int reserve(Writer *w, Py_ssize_t extra) {
    if (w->len + extra <= w->cap) return 0;
    Py_ssize_t cap = w->cap * 2;
    while (cap < w->len + extra) cap *= 2;
    char *buf;
    if (w->buf == w->small) {
        buf = PyMem_Malloc(cap);
        if (buf != NULL) memcpy(buf, w->small, w->len);
    } else {
        buf = PyMem_Realloc(w->buf, cap);
    }
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->buf = buf;
    w->cap = cap;
    return 0;
}

static int put_long(Writer *w, int64_t v) {
    if (reserve(w, 10) < 0) return -1;
    uint64_t n = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    while (n > 127) {
        w->buf[w->len++] = (char)((n & 127) | 128);
        n >>= 7;
    }
    w->buf[w->len++] = (char)n;
    return 0;
}

static int put_byte(Writer *w, char b) {
    if (reserve(w, 1) < 0) return -1;
    w->buf[w->len++] = b;
    return 0;
}

static int put_raw(Writer *w, const char *data, Py_ssize_t len) {
    if (put_long(w, len) < 0 || reserve(w, len) < 0) return -1;
    memcpy(w->buf + w->len, data, len);
    w->len += len;
    return 0;
}

static int as_long(PyObject *value, int64_t *out) {
    PyObject *index;
    if (PyLong_Check(value)) {
        Py_INCREF(value);
        index = value;
    } else if (PyFloat_Check(value)) {
        PyErr_Format(PyExc_TypeError, "an Avro long cannot hold the float %R", value);
        return -1;
    } else {
        index = PyNumber_Index(value);
        if (index == NULL) return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "integer does not fit an Avro long");
        return -1;
    }
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int64_t)v;
    return 0;
}

static int write_value(PyObject *prog, PyObject *value, Writer *w, int depth);

static int write_record(PyObject *prog, PyObject *value, Writer *w, int depth) {
    if (!PyDict_Check(value)) {
        PyErr_Format(PyExc_TypeError, "a record must be a dict, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    PyObject *names = PyTuple_GET_ITEM(prog, 1);
    PyObject *progs = PyTuple_GET_ITEM(prog, 2);
    PyObject *modes = PyTuple_GET_ITEM(prog, 3);
    PyObject *defaults = PyTuple_GET_ITEM(prog, 4);
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        PyObject *field = PyDict_GetItemWithError(value, name);
        if (field == NULL) {
            if (PyErr_Occurred()) return -1;
            long mode = PyLong_AsLong(PyTuple_GET_ITEM(modes, i));
            if (mode == FIELD_DEFAULT) {
                field = PyTuple_GET_ITEM(defaults, i);
            } else if (mode == FIELD_NULLABLE) {
                field = Py_None;
            } else {
                PyErr_SetObject(PyExc_KeyError, name);
                return -1;
            }
        }
        if (write_value(PyTuple_GET_ITEM(progs, i), field, w, depth + 1) < 0) return -1;
    }
    return 0;
}

static int write_string(PyObject *value, Writer *w) {
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "an Avro string must be a str, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(value, &len);
    if (utf8 == NULL) return -1;
    return put_raw(w, utf8, len);
}

static int write_items(PyObject *prog, PyObject *value, Writer *w, int depth) {
    PyObject *items = PyTuple_GET_ITEM(prog, 1);
    Py_ssize_t n = PyObject_Length(value);
    if (n < 0) return -1;
    if (n > 0) {
        PyObject *seq = PySequence_Fast(value, "an Avro array must be a sequence");
        if (seq == NULL) return -1;
        Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
        int rc = put_long(w, m);
        for (Py_ssize_t i = 0; rc == 0 && i < m; i++) {
            rc = write_value(items, PySequence_Fast_GET_ITEM(seq, i), w, depth + 1);
        }
        Py_DECREF(seq);
        if (rc < 0) return -1;
    }
    return put_byte(w, 0);  /* the end of the blocks */
}

static int write_map(PyObject *prog, PyObject *value, Writer *w, int depth) {
    PyObject *values = PyTuple_GET_ITEM(prog, 1);
    PyObject *pairs = NULL;
    Py_ssize_t n;
    if (PyDict_Check(value)) {
        n = PyDict_GET_SIZE(value);
    } else {
        pairs = PyMapping_Items(value);
        if (pairs == NULL) return -1;
        n = PyList_GET_SIZE(pairs);
    }
    int rc = 0;
    if (n > 0) {
        rc = put_long(w, n);
        if (pairs == NULL) {
            Py_ssize_t at = 0;
            PyObject *k, *v;
            while (rc == 0 && PyDict_Next(value, &at, &k, &v)) {
                rc = write_string(k, w);
                if (rc == 0) rc = write_value(values, v, w, depth + 1);
            }
        } else {
            for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
                PyObject *pair = PyList_GET_ITEM(pairs, i);
                if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                    PyErr_SetString(PyExc_TypeError, "a map's items must be pairs");
                    rc = -1;
                    break;
                }
                rc = write_string(PyTuple_GET_ITEM(pair, 0), w);
                if (rc == 0) rc = write_value(values, PyTuple_GET_ITEM(pair, 1), w, depth + 1);
            }
        }
    }
    Py_XDECREF(pairs);
    if (rc < 0) return -1;
    return put_byte(w, 0);  /* the end of the blocks */
}

static int write_value(PyObject *prog, PyObject *value, Writer *w, int depth) {
    if (depth > MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "schema nested too deeply");
        return -1;
    }
    if (PyLong_CheckExact(prog)) {
        switch (PyLong_AsLong(prog)) {
        case NULL_T:
            if (value != Py_None) {
                PyErr_SetString(PyExc_TypeError, "null field got a value");
                return -1;
            }
            return 0;
        case BOOLEAN_T: {
            int truth = PyObject_IsTrue(value);
            return truth < 0 ? -1 : put_byte(w, (char)truth);
        }
        case LONG_T: {
            int64_t v;
            if (as_long(value, &v) < 0) return -1;
            return put_long(w, v);
        }
        case FLOAT_T:
        case DOUBLE_T: {
            double v = PyFloat_AsDouble(value);
            if (v == -1.0 && PyErr_Occurred()) return -1;
            int single = PyLong_AsLong(prog) == FLOAT_T;
            if (reserve(w, 8) < 0) return -1;
            if ((single ? PyFloat_Pack4(v, w->buf + w->len, 1)
                        : PyFloat_Pack8(v, w->buf + w->len, 1)) < 0) return -1;
            w->len += single ? 4 : 8;
            return 0;
        }
        case STRING_T:
            return write_string(value, w);
        case BYTES_T: {
            Py_buffer view;
            if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) return -1;
            int rc = put_raw(w, view.buf, view.len);
            PyBuffer_Release(&view);
            return rc;
        }
        }
        PyErr_SetString(PyExc_ValueError, "unknown primitive code");
        return -1;
    }
    switch (PyLong_AsLong(PyTuple_GET_ITEM(prog, 0))) {
    case RECORD_T:
        return write_record(prog, value, w, depth);
    case ENUM_T: {
        PyObject *index = PyDict_GetItemWithError(PyTuple_GET_ITEM(prog, 2), value);
        if (index == NULL) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, value);
            return -1;
        }
        return put_long(w, PyLong_AsLongLong(index));
    }
    case ARRAY_T:
        return write_items(prog, value, w, depth);
    case MAP_T:
        return write_map(prog, value, w, depth);
    case UNION_T: {
        long null_index = PyLong_AsLong(PyTuple_GET_ITEM(prog, 2));
        long other_index = PyLong_AsLong(PyTuple_GET_ITEM(prog, 3));
        if (value == Py_None && null_index >= 0) return put_long(w, null_index);
        if (other_index < 0) {
            PyErr_SetString(PyExc_TypeError, "a null-only union got a value");
            return -1;
        }
        if (put_long(w, other_index) < 0) return -1;
        return write_value(PyTuple_GET_ITEM(prog, 4), value, w, depth + 1);
    }
    }
    PyErr_SetString(PyExc_ValueError, "malformed schema program");
    return -1;
}

/* write(program, record) -> bytes */
static PyObject *native_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write(program, record)");
        return NULL;
    }
    Writer w;
    w.buf = w.small;
    w.len = 0;
    w.cap = sizeof(w.small);
    PyObject *result = NULL;
    if (write_value(args[0], args[1], &w, 0) == 0) {
        result = PyBytes_FromStringAndSize(w.buf, w.len);
    }
    if (w.buf != w.small) PyMem_Free(w.buf);
    return result;
}

static PyMethodDef methods[] = {
    {"read", (PyCFunction)(void (*)(void))native_read, METH_FASTCALL,
     "read(program, data, pos) -> (record, end)"},
    {"write", (PyCFunction)(void (*)(void))native_write, METH_FASTCALL,
     "write(program, record) -> bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "schemas._impl._native",
    "Avro bodies read and written by a schema program (see compiled.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    return PyModule_Create(&module);
}
