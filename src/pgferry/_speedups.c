/*
 * pgferry._speedups: the per-change hot spots of the pure-Python code, in C.
 *
 * Optional: every function here has a Python twin that is the reference (the
 * tests run both on the same inputs and compare). The package works without
 * this module; it is built when a C compiler is there.
 *
 *   read_tuple(buf, pos) -> (values, next_pos)
 *       pgoutput TupleData (PostgreSQL docs, "Logical Replication Message
 *       Formats"): Int16 column count, then per column a kind byte ('n' NULL,
 *       'u' unchanged TOAST, 't' text, 'b' binary) and, for 't' and 'b', an
 *       Int32 length and that many bytes. Twin: pgoutput._py_read_tuple.
 *   copy_line(values, tail, n=-1) -> bytes
 *       One row of COPY's text format: NULL as \N, backslash, tab, newline and
 *       carriage return escaped, fields joined by tabs, then tail, then (when
 *       n >= 0) n in decimal and a newline. Twin: staging._py_line.
 *   parse_copy_data(data) -> XLogData | PrimaryKeepalive
 *       The streaming replication envelope of one CopyData message: an XLogData
 *       ('w': Int64 start, Int64 end, Int64 send time, payload) is parsed here,
 *       anything else by the Python twin. Twin: envelope._py_parse_copy_data.
 *   plain_width(values) -> int
 *       The total length of the values, or -1 if one is unchanged TOAST or
 *       binary. Twin: staging._py_plain_width.
 *
 *   relay_copy(get, put, free, src, dst) -> int
 *       One COPY relayed inside libpq, for the table sync: rows are read from
 *       the PGconn src (in COPY OUT) with PQgetCopyData, packed into 64 kB
 *       chunks and written to the PGconn dst (in COPY IN) with PQputCopyData,
 *       until src ends its COPY. get, put and free are the addresses of
 *       PQgetCopyData, PQputCopyData and PQfreemem of the libpq that made both
 *       connections; both must be in blocking mode. The GIL is released for the
 *       whole loop. Returns the number of bytes relayed, or -2 when reading
 *       failed, -3 when writing failed (the caller reads the error from the
 *       connection). Twin: sync.relay._py_relay.
 *
 * configure(unchanged, binary_type, short_error, kind_error) must be called
 * first with the Python objects these functions produce or raise: the
 * unchanged-TOAST marker, the BinaryValue type, a callable (offset) -> exception
 * for a value running past the buffer, and a callable (kind, offset) ->
 * exception for an unknown column kind. A header running past the buffer
 * raises IndexError, as indexing bytes does in the twin.
 * configure_envelope(xlogdata_new, lsn, fallback) likewise for parse_copy_data:
 * a callable (4-tuple) -> XLogData, a callable (int) -> Lsn, and the twin.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *unchanged = NULL;
static PyObject *binary_type = NULL;
static PyObject *short_error = NULL;
static PyObject *kind_error = NULL;

static PyObject *xlogdata_new = NULL;
static PyObject *lsn_new = NULL;
static PyObject *envelope_fallback = NULL;

static PyObject *
configure_envelope(PyObject *self, PyObject *args)
{
    PyObject *x, *l, *f;
    if (!PyArg_ParseTuple(args, "OOO", &x, &l, &f))
        return NULL;
    Py_XSETREF(xlogdata_new, Py_NewRef(x));
    Py_XSETREF(lsn_new, Py_NewRef(l));
    Py_XSETREF(envelope_fallback, Py_NewRef(f));
    Py_RETURN_NONE;
}

static unsigned long long
be64(const unsigned char *p)
{
    unsigned long long v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static PyObject *
make_lsn(unsigned long long v)
{
    PyObject *n = PyLong_FromUnsignedLongLong(v);
    if (n == NULL)
        return NULL;
    PyObject *lsn = PyObject_CallOneArg(lsn_new, n);
    Py_DECREF(n);
    return lsn;
}

static PyObject *
parse_copy_data(PyObject *self, PyObject *arg)
{
    if (xlogdata_new == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pgferry._speedups envelope is not configured");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = (const unsigned char *)view.buf;
    if (view.len < 25 || p[0] != 'w') {
        PyBuffer_Release(&view);
        return PyObject_CallOneArg(envelope_fallback, arg);
    }
    PyObject *start = NULL, *end = NULL, *sent = NULL, *payload = NULL, *fields = NULL;
    PyObject *result = NULL;
    start = make_lsn(be64(p + 1));
    end = start ? make_lsn(be64(p + 9)) : NULL;
    sent = end ? PyLong_FromLongLong((long long)be64(p + 17)) : NULL;
    payload = sent ? PyBytes_FromStringAndSize((const char *)p + 25, view.len - 25) : NULL;
    if (payload != NULL) {
        fields = PyTuple_Pack(4, start, end, sent, payload);
        if (fields != NULL)
            result = PyObject_CallOneArg(xlogdata_new, fields);
    }
    Py_XDECREF(start);
    Py_XDECREF(end);
    Py_XDECREF(sent);
    Py_XDECREF(payload);
    Py_XDECREF(fields);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *u, *b, *s, *k;
    if (!PyArg_ParseTuple(args, "OOOO", &u, &b, &s, &k))
        return NULL;
    Py_XSETREF(unchanged, Py_NewRef(u));
    Py_XSETREF(binary_type, Py_NewRef(b));
    Py_XSETREF(short_error, Py_NewRef(s));
    Py_XSETREF(kind_error, Py_NewRef(k));
    Py_RETURN_NONE;
}

static int
configured(void)
{
    if (unchanged == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pgferry._speedups is not configured");
        return 0;
    }
    return 1;
}

static void
raise_from(PyObject *factory, PyObject *args)
{
    /* factory(*args) returns the exception to raise */
    if (args == NULL)
        return;
    PyObject *exc = PyObject_CallObject(factory, args);
    Py_DECREF(args);
    if (exc == NULL)
        return;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
}

static PyObject *
read_tuple(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos;
    if (!configured())
        return NULL;
    if (!PyArg_ParseTuple(args, "y*n", &view, &pos))
        return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len;
    PyObject *values = NULL;
    if (pos < 0 || pos + 2 > size) {
        PyErr_SetString(PyExc_IndexError, "tuple header out of range");
        goto fail;
    }
    Py_ssize_t ncols = ((Py_ssize_t)buf[pos] << 8) | buf[pos + 1];
    pos += 2;
    values = PyTuple_New(ncols);
    if (values == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (pos >= size) {
            PyErr_SetString(PyExc_IndexError, "column kind out of range");
            goto fail;
        }
        unsigned char kind = buf[pos];
        PyObject *value;
        if (kind == 't' || kind == 'b') {
            if (pos + 5 > size) {
                PyErr_SetString(PyExc_IndexError, "column length out of range");
                goto fail;
            }
            size_t length = ((size_t)buf[pos + 1] << 24) | ((size_t)buf[pos + 2] << 16) |
                            ((size_t)buf[pos + 3] << 8) | (size_t)buf[pos + 4];
            Py_ssize_t start = pos + 5;
            if (length > (size_t)(size - start)) {
                raise_from(short_error, Py_BuildValue("(n)", start));
                goto fail;
            }
            pos = start + (Py_ssize_t)length;
            value = PyBytes_FromStringAndSize((const char *)buf + start, (Py_ssize_t)length);
            if (value == NULL)
                goto fail;
            if (kind == 'b') {
                PyObject *wrapped = PyObject_CallOneArg(binary_type, value);
                Py_DECREF(value);
                if (wrapped == NULL)
                    goto fail;
                value = wrapped;
            }
        }
        else if (kind == 'n') {
            value = Py_NewRef(Py_None);
            pos += 1;
        }
        else if (kind == 'u') {
            value = Py_NewRef(unchanged);
            pos += 1;
        }
        else {
            raise_from(kind_error, Py_BuildValue("(in)", (int)kind, pos));
            goto fail;
        }
        PyTuple_SET_ITEM(values, i, value);
    }
    PyBuffer_Release(&view);
    PyObject *result = Py_BuildValue("(Nn)", values, pos);
    return result;
fail:
    Py_XDECREF(values);
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *
copy_line(PyObject *self, PyObject *args)
{
    PyObject *values, *tail;
    Py_ssize_t number = -1;
    if (!PyArg_ParseTuple(args, "O!S|n", &PyTuple_Type, &values, &tail, &number))
        return NULL;
    char digits[32];
    int ndigits = 0;
    if (number >= 0)
        ndigits = snprintf(digits, sizeof digits, "%zd\n", number);
    Py_ssize_t n = PyTuple_GET_SIZE(values);
    /* First pass: the length, escapes included. */
    Py_ssize_t total = PyBytes_GET_SIZE(tail) + ndigits + (n > 0 ? n - 1 : 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(values, i);
        if (v == Py_None) {
            total += 2;
            continue;
        }
        if (!PyBytes_Check(v)) {
            PyErr_Format(PyExc_TypeError, "a COPY field must be bytes or None, not %.100s",
                         Py_TYPE(v)->tp_name);
            return NULL;
        }
        const char *s = PyBytes_AS_STRING(v);
        Py_ssize_t len = PyBytes_GET_SIZE(v);
        total += len;
        for (Py_ssize_t j = 0; j < len; j++) {
            char c = s[j];
            if (c == '\\' || c == '\t' || c == '\n' || c == '\r')
                total += 1;
        }
    }
    PyObject *line = PyBytes_FromStringAndSize(NULL, total);
    if (line == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(line);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i > 0)
            *out++ = '\t';
        PyObject *v = PyTuple_GET_ITEM(values, i);
        if (v == Py_None) {
            *out++ = '\\';
            *out++ = 'N';
            continue;
        }
        const char *s = PyBytes_AS_STRING(v);
        Py_ssize_t len = PyBytes_GET_SIZE(v);
        for (Py_ssize_t j = 0; j < len; j++) {
            char c = s[j];
            switch (c) {
            case '\\': *out++ = '\\'; *out++ = '\\'; break;
            case '\t': *out++ = '\\'; *out++ = 't'; break;
            case '\n': *out++ = '\\'; *out++ = 'n'; break;
            case '\r': *out++ = '\\'; *out++ = 'r'; break;
            default: *out++ = c;
            }
        }
    }
    memcpy(out, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
    out += PyBytes_GET_SIZE(tail);
    if (ndigits > 0)
        memcpy(out, digits, ndigits);
    return line;
}

static PyObject *
plain_width(PyObject *self, PyObject *arg)
{
    if (!configured())
        return NULL;
    if (!PyTuple_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "plain_width takes a tuple");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(arg), width = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(arg, i);
        if (v == Py_None)
            continue;
        if (v == unchanged || (PyObject *)Py_TYPE(v) == binary_type)
            return PyLong_FromLong(-1);
        if (!PyBytes_Check(v)) {
            PyErr_Format(PyExc_TypeError, "a column value must be bytes or None, not %.100s",
                         Py_TYPE(v)->tp_name);
            return NULL;
        }
        width += PyBytes_GET_SIZE(v);
    }
    return PyLong_FromSsize_t(width);
}

typedef int (*copy_get_fn)(void *, char **, int);
typedef int (*copy_put_fn)(void *, const char *, int);
typedef void (*copy_free_fn)(void *);

#define RELAY_CHUNK 65536

static long long
relay_loop(copy_get_fn get, copy_put_fn put, copy_free_fn release, void *src, void *dst,
           char *chunk)
{
    size_t used = 0;
    long long total = 0;
    for (;;) {
        char *row = NULL;
        int n = get(src, &row, 0);  /* 0: wait for a whole row */
        if (n < 0) {
            if (n == -1 && used > 0 && put(dst, chunk, (int)used) != 1)
                return -3;
            return n == -1 ? total : -2;
        }
        if (n == 0)
            continue;  /* only in async mode; not asked for */
        if (used + (size_t)n > RELAY_CHUNK && used > 0) {
            if (put(dst, chunk, (int)used) != 1) {
                release(row);
                return -3;
            }
            used = 0;
        }
        if ((size_t)n > RELAY_CHUNK) {  /* a row longer than a chunk goes alone */
            int ok = put(dst, row, n);
            release(row);
            if (ok != 1)
                return -3;
        }
        else {
            memcpy(chunk + used, row, (size_t)n);
            used += (size_t)n;
            release(row);
        }
        total += n;
    }
}

static PyObject *
relay_copy(PyObject *self, PyObject *args)
{
    unsigned long long get, put, release, src, dst;
    long long result;
    char *chunk;
    if (!PyArg_ParseTuple(args, "KKKKK", &get, &put, &release, &src, &dst))
        return NULL;
    if (!get || !put || !release || !src || !dst) {
        PyErr_SetString(PyExc_ValueError, "relay_copy: a null address");
        return NULL;
    }
    chunk = PyMem_RawMalloc(RELAY_CHUNK);
    if (chunk == NULL)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    result = relay_loop((copy_get_fn)(uintptr_t)get, (copy_put_fn)(uintptr_t)put,
                        (copy_free_fn)(uintptr_t)release, (void *)(uintptr_t)src,
                        (void *)(uintptr_t)dst, chunk);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(chunk);
    return PyLong_FromLongLong(result);
}

static PyMethodDef methods[] = {
    {"relay_copy", relay_copy, METH_VARARGS, "Relay one COPY from src to dst inside libpq."},
    {"configure", configure, METH_VARARGS, "Set the objects the functions produce or raise."},
    {"read_tuple", read_tuple, METH_VARARGS, "pgoutput TupleData -> (values, next offset)."},
    {"copy_line", copy_line, METH_VARARGS, "A row of COPY's text format, then tail (and n)."},
    {"configure_envelope", configure_envelope, METH_VARARGS, "Set the envelope's objects."},
    {"parse_copy_data", parse_copy_data, METH_O, "One CopyData message of a stream."},
    {"plain_width", plain_width, METH_O, "Total length, or -1 if a value is not plain."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pgferry._speedups", "C twins of pgferry's hottest functions.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
