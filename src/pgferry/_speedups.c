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
 *   decode_hot(payload, streamed) -> Begin | Commit | Insert | Update | Delete | None
 *       The hottest pgoutput messages, decoded as PgoutputDecoder.decode does
 *       (streamed: inside a streamed block, where a change starts with an xid
 *       and Begin and Commit do not belong); None for any other message and
 *       for any that is not well formed: the Python decoder, the reference,
 *       then decodes it or says what is wrong with it.
 *   drain(get, free, conn, max_items) -> (messages, status)
 *       The CopyData messages libpq has already received on the PGconn conn
 *       (in COPY BOTH), up to max_items, each as parse_copy_data makes it;
 *       get and free are the addresses of PQgetCopyData and PQfreemem of the
 *       libpq that made conn. status is PQgetCopyData's last return when it
 *       stopped the loop: 0 (nothing more buffered), -1 (the COPY ended) or -2
 *       (an error: the caller reads it from the connection); 1 when max_items
 *       did. Twin: the loop in stream.connection.ReplicationStream.read_batch.
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
 *   exchange(functions, conn, query, copies) -> (results, error)
 *       One simple query on the PGconn conn (blocking mode), its COPY FROM
 *       STDINs fed in order from copies, all with the GIL released: the
 *       applier's batch of staged statements in one round trip per COPY.
 *       functions is stream.libpq.Functions (the addresses of the libpq that
 *       made conn). results: per result other than COPY IN, in order,
 *       (status, rows, value): PQresultStatus, PQcmdTuples as an int (-1 when
 *       empty), and the first field of the first row (None when there is none
 *       or it is NULL). error: None, or (sqlstate, message) as bytes of the
 *       first failed result, or (b"", libpq's message) when sending failed.
 *       Twin: the statements run one by one (staging.Staged.run).
 *
 * configure(unchanged, binary_type, short_error, kind_error) must be called
 * first with the Python objects these functions produce or raise: the
 * unchanged-TOAST marker, the BinaryValue type, a callable (offset) -> exception
 * for a value running past the buffer, and a callable (kind, offset) ->
 * exception for an unknown column kind. A header running past the buffer
 * raises IndexError, as indexing bytes does in the twin.
 * configure_envelope(XLogData, lsn, fallback) likewise for parse_copy_data and
 * drain: the XLogData class, the Lsn class (an int subclass: made as
 * int.__new__(Lsn, value)), and the envelope's twin.
 * configure_decoder(Begin, Commit, Insert, Update, Delete) for decode_hot.
 * Messages (NamedTuple classes) are built as tuple.__new__(cls, fields) does.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static PyObject *unchanged = NULL;
static PyObject *binary_type = NULL;
static PyObject *short_error = NULL;
static PyObject *kind_error = NULL;

static PyObject *xlogdata_cls = NULL;
static PyObject *lsn_type = NULL;
static PyObject *envelope_fallback = NULL;

static PyObject *
configure_envelope(PyObject *self, PyObject *args)
{
    PyObject *x, *l, *f;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyType_Type, &x, &PyType_Type, &l, &f))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)x, &PyTuple_Type) ||
        !PyType_IsSubtype((PyTypeObject *)l, &PyLong_Type)) {
        PyErr_SetString(PyExc_TypeError, "configure_envelope takes tuple and int subclasses");
        return NULL;
    }
    Py_XSETREF(xlogdata_cls, Py_NewRef(x));
    Py_XSETREF(lsn_type, Py_NewRef(l));
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

/* int.__new__(Lsn, v): an Lsn without its Python-level range check (a 64-bit
 * unsigned protocol field cannot be out of range). */
static PyObject *
make_lsn(unsigned long long v)
{
    PyObject *n = PyLong_FromUnsignedLongLong(v);
    if (n == NULL)
        return NULL;
    PyObject *args = PyTuple_Pack(1, n);
    Py_DECREF(n);
    if (args == NULL)
        return NULL;
    PyObject *lsn = PyLong_Type.tp_new((PyTypeObject *)lsn_type, args, NULL);
    Py_DECREF(args);
    return lsn;
}

static PyObject *envelope_of(const char *data, Py_ssize_t n);
static PyObject *named(PyObject *cls, Py_ssize_t n, PyObject **items);

static PyObject *
parse_copy_data(PyObject *self, PyObject *arg)
{
    if (xlogdata_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pgferry._speedups envelope is not configured");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = envelope_of((const char *)view.buf, view.len);
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

/* TupleData at *pos of buf[0:size] -> a tuple of values, *pos moved past it;
 * NULL with an exception set when it is malformed. */
static PyObject *
tuple_at(const unsigned char *buf, Py_ssize_t size, Py_ssize_t *at)
{
    Py_ssize_t pos = *at;
    PyObject *values = NULL;
    if (pos < 0 || pos + 2 > size) {
        PyErr_SetString(PyExc_IndexError, "tuple header out of range");
        return NULL;
    }
    Py_ssize_t ncols = ((Py_ssize_t)buf[pos] << 8) | buf[pos + 1];
    pos += 2;
    values = PyTuple_New(ncols);
    if (values == NULL)
        return NULL;
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
    *at = pos;
    return values;
fail:
    Py_DECREF(values);
    return NULL;
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
    PyObject *values = tuple_at((const unsigned char *)view.buf, view.len, &pos);
    PyBuffer_Release(&view);
    if (values == NULL)
        return NULL;
    return Py_BuildValue("(Nn)", values, pos);
}

/* An instance of the NamedTuple class cls holding the n items (references
 * stolen, also on failure), as tuple.__new__(cls, items) makes it. */
static PyObject *
named(PyObject *cls, Py_ssize_t n, PyObject **items)
{
    PyObject *obj = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == NULL)
            goto fail;
    obj = ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, n);
    if (obj == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(obj, i, items[i]);
    return obj;
fail:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

static unsigned int
be32(const unsigned char *p)
{
    return ((unsigned int)p[0] << 24) | ((unsigned int)p[1] << 16) | ((unsigned int)p[2] << 8) |
           (unsigned int)p[3];
}

static PyObject *begin_cls = NULL, *commit_cls = NULL, *insert_cls = NULL, *update_cls = NULL,
                *delete_cls = NULL, *kind_k = NULL, *kind_o = NULL;

static PyObject *
configure_decoder(PyObject *self, PyObject *args)
{
    PyObject *b, *c, *i, *u, *d;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!", &PyType_Type, &b, &PyType_Type, &c, &PyType_Type,
                          &i, &PyType_Type, &u, &PyType_Type, &d))
        return NULL;
    PyObject *classes[] = {b, c, i, u, d};
    for (int k = 0; k < 5; k++) {
        if (!PyType_IsSubtype((PyTypeObject *)classes[k], &PyTuple_Type)) {
            PyErr_SetString(PyExc_TypeError, "configure_decoder takes tuple subclasses");
            return NULL;
        }
    }
    if (kind_k == NULL) {
        kind_k = PyUnicode_InternFromString("K");
        kind_o = PyUnicode_InternFromString("O");
        if (kind_k == NULL || kind_o == NULL)
            return NULL;
    }
    Py_XSETREF(begin_cls, Py_NewRef(b));
    Py_XSETREF(commit_cls, Py_NewRef(c));
    Py_XSETREF(insert_cls, Py_NewRef(i));
    Py_XSETREF(update_cls, Py_NewRef(u));
    Py_XSETREF(delete_cls, Py_NewRef(d));
    Py_RETURN_NONE;
}

/* The tuple at *pos; NULL (no exception) when it is malformed: the caller
 * leaves the message to the Python decoder, which says what is wrong. */
static PyObject *
hot_tuple(const unsigned char *p, Py_ssize_t size, Py_ssize_t *pos)
{
    PyObject *values = tuple_at(p, size, pos);
    if (values == NULL && !PyErr_ExceptionMatches(PyExc_MemoryError))
        PyErr_Clear();
    return values;
}

/* hot_tuple for the message's last tuple: NULL also when bytes follow it. */
static PyObject *
last_tuple(const unsigned char *p, Py_ssize_t size, Py_ssize_t *pos)
{
    PyObject *values = hot_tuple(p, size, pos);
    if (values != NULL && *pos != size)
        Py_CLEAR(values);
    return values;
}

/* A change's xid field: the one after the type byte inside a streamed block. */
static PyObject *
change_xid(const unsigned char *p, int streamed)
{
    return streamed ? PyLong_FromUnsignedLong(be32(p + 1)) : Py_NewRef(Py_None);
}

static PyObject *
decode_hot(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!configured())
        return NULL;
    if (begin_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pgferry._speedups decoder is not configured");
        return NULL;
    }
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "decode_hot takes bytes and a flag");
        return NULL;
    }
    int streamed = PyObject_IsTrue(args[1]);
    if (streamed < 0)
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), pos;
    /* Inside a streamed block a change starts with its transaction's xid. */
    Py_ssize_t h = streamed ? 5 : 1;
    if (size < 1)
        Py_RETURN_NONE;
    switch (p[0]) {
    case 'B':
        if (streamed || size != 21)
            break;
        {
            PyObject *items[] = {make_lsn(be64(p + 1)), PyLong_FromLongLong((long long)be64(p + 9)),
                                 PyLong_FromUnsignedLong(be32(p + 17))};
            return named(begin_cls, 3, items);
        }
    case 'C':
        if (streamed || size != 26)
            break;
        {
            PyObject *items[] = {PyLong_FromLong(p[1]), make_lsn(be64(p + 2)),
                                 make_lsn(be64(p + 10)),
                                 PyLong_FromLongLong((long long)be64(p + 18))};
            return named(commit_cls, 4, items);
        }
    case 'I':
        if (size < h + 5 || p[h + 4] != 'N')
            break;
        pos = h + 5;
        {
            PyObject *new = last_tuple(p, size, &pos);
            if (new == NULL)
                break;
            PyObject *items[] = {change_xid(p, streamed), PyLong_FromUnsignedLong(be32(p + h)),
                                 new};
            return named(insert_cls, 3, items);
        }
    case 'U':
        if (size < h + 5)
            break;
        pos = h + 4;
        {
            PyObject *old = NULL, *old_kind = Py_None, *new;
            if (p[pos] == 'K' || p[pos] == 'O') {
                old_kind = p[pos] == 'K' ? kind_k : kind_o;
                pos += 1;
                old = hot_tuple(p, size, &pos);
                if (old == NULL)
                    break;
            }
            if (pos >= size || p[pos] != 'N') {
                Py_XDECREF(old);
                break;
            }
            pos += 1;
            new = last_tuple(p, size, &pos);
            if (new == NULL) {
                Py_XDECREF(old);
                break;
            }
            PyObject *items[] = {change_xid(p, streamed), PyLong_FromUnsignedLong(be32(p + h)),
                                 Py_NewRef(old_kind),
                                 old != NULL ? old : Py_NewRef(Py_None), new};
            return named(update_cls, 5, items);
        }
    case 'D':
        if (size < h + 5 || (p[h + 4] != 'K' && p[h + 4] != 'O'))
            break;
        pos = h + 5;
        {
            PyObject *old = last_tuple(p, size, &pos);
            if (old == NULL)
                break;
            PyObject *items[] = {change_xid(p, streamed), PyLong_FromUnsignedLong(be32(p + h)),
                                 Py_NewRef(p[h + 4] == 'K' ? kind_k : kind_o), old};
            return named(delete_cls, 4, items);
        }
    }
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
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

/* The total length of plain values (text bytes or NULL); -1 when one is unchanged
 * TOAST or binary (or not bytes: the Python twin says what is wrong). */
static Py_ssize_t
plain_total(PyObject *values)
{
    Py_ssize_t n = PyTuple_GET_SIZE(values), width = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(values, i);
        if (v == Py_None)
            continue;
        if (!PyBytes_CheckExact(v))
            return -1;
        width += PyBytes_GET_SIZE(v);
    }
    return width;
}

/* The key columns' values of ``values``; NULL without an exception when one is
 * NULL or not plain, or a position is out of range (left to the Python twin). */
static PyObject *
key_of(PyObject *values, PyObject *positions)
{
    Py_ssize_t nk = PyTuple_GET_SIZE(positions), n = PyTuple_GET_SIZE(values);
    PyObject *key = PyTuple_New(nk);
    if (key == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nk; i++) {
        Py_ssize_t at = PyLong_AsSsize_t(PyTuple_GET_ITEM(positions, i));
        if (at < 0 || at >= n) {
            Py_DECREF(key);
            if (PyErr_Occurred())
                PyErr_Clear();
            return NULL;
        }
        PyObject *v = PyTuple_GET_ITEM(values, at);
        if (!PyBytes_CheckExact(v)) {
            Py_DECREF(key);
            return NULL;
        }
        PyTuple_SET_ITEM(key, i, Py_NewRef(v));
    }
    return key;
}

/* A stage entry: [existed before the batch, last version, first transaction, its
 * new values] (see staging.Stage). */
static PyObject *
new_entry(PyObject *existed, PyObject *last, PyObject *tx, PyObject *first)
{
    PyObject *entry = PyList_New(4);
    if (entry == NULL)
        return NULL;
    PyList_SET_ITEM(entry, 0, Py_NewRef(existed));
    PyList_SET_ITEM(entry, 1, Py_NewRef(last));
    PyList_SET_ITEM(entry, 2, Py_NewRef(tx));
    PyList_SET_ITEM(entry, 3, Py_NewRef(first));
    return entry;
}

/* The entry of ``values``' key in ``rows``: made [existed, last, tx, first] when
 * there is none; when there is one and it may take this change (``reinsert``: a
 * key inserted then deleted in this batch; else: a key not deleted), its last
 * version set to ``last``. 1 done, 0 left to the Python twin, -1 error. */
static int
stage_key(PyObject *rows, PyObject *values, PyObject *positions, PyObject *existed,
          PyObject *last, PyObject *tx, PyObject *first, int reinsert)
{
    PyObject *key = key_of(values, positions);
    if (key == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *entry = PyDict_GetItemWithError(rows, key);
    int done = 0;
    if (entry == NULL) {
        if (PyErr_Occurred())
            done = -1;
        else {
            PyObject *made = new_entry(existed, last, tx, first);
            done = made == NULL || PyDict_SetItem(rows, key, made) < 0 ? -1 : 1;
            Py_XDECREF(made);
        }
    }
    else if (PyList_CheckExact(entry) && PyList_GET_SIZE(entry) == 4 &&
             (reinsert ? PyList_GET_ITEM(entry, 0) == Py_False && PyList_GET_ITEM(entry, 1) == Py_None
                       : PyList_GET_ITEM(entry, 1) != Py_None)) {
        PyObject *previous = PyList_GET_ITEM(entry, 1);
        PyList_SET_ITEM(entry, 1, Py_NewRef(last));
        Py_DECREF(previous);
        done = 1;
    }
    Py_DECREF(key);
    return done;
}

/* The common cases of staging.Stage.add: stage_change(rows, inserts, key
 * positions, change, tx) -> the width staged, or -1: nothing was touched, the
 * Python twin decides (it also refuses what cannot be staged). ``inserts`` is
 * the list of a stage that takes inserts only, else None. */
static PyObject *
stage_change(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyDict_CheckExact(args[0]) || !PyTuple_Check(args[2]) ||
        (args[1] != Py_None && !PyList_CheckExact(args[1]))) {
        PyErr_SetString(PyExc_TypeError, "stage_change takes a dict, a list or None, a tuple, "
                                         "a change and a transaction");
        return NULL;
    }
    PyObject *rows = args[0], *inserts = args[1], *positions = args[2], *change = args[3],
             *tx = args[4];
    PyObject *type = (PyObject *)Py_TYPE(change);
    Py_ssize_t size = PyTuple_Check(change) ? PyTuple_GET_SIZE(change) : -1, width = 0;
    int done;
    /* (A stage of changes by key has a key.) */
    if (insert_cls == NULL || (inserts == Py_None && PyTuple_GET_SIZE(positions) == 0))
        return PyLong_FromLong(-1);
    if (type == insert_cls && size == 3) {
        PyObject *new = PyTuple_GET_ITEM(change, 2);
        if (!PyTuple_Check(new) || (width = plain_total(new)) < 0)
            return PyLong_FromLong(-1);
        if (inserts != Py_None)
            return PyList_Append(inserts, new) < 0 ? NULL : PyLong_FromSsize_t(width);
        /* A new key, or one inserted, deleted and inserted again. */
        done = stage_key(rows, new, positions, Py_False, new, Py_None, Py_None, 1);
    }
    else if (inserts != Py_None)
        return PyLong_FromLong(-1);
    else if (type == update_cls && size == 5) {
        PyObject *new = PyTuple_GET_ITEM(change, 4);
        /* With an old key: the Python twin compares it with the new one. */
        if (PyTuple_GET_ITEM(change, 3) != Py_None || !PyTuple_Check(new) ||
            (width = plain_total(new)) < 0)
            return PyLong_FromLong(-1);
        done = stage_key(rows, new, positions, Py_True, new, tx, new, 0);
    }
    else if (type == delete_cls && size == 4) {
        PyObject *old = PyTuple_GET_ITEM(change, 3);
        if (!PyTuple_Check(old))
            return PyLong_FromLong(-1);
        done = stage_key(rows, old, positions, Py_True, Py_None, tx, Py_None, 0);
    }
    else
        return PyLong_FromLong(-1);
    if (done < 0)
        return NULL;
    return PyLong_FromSsize_t(done ? width : -1);
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


/* One CopyData message of a replication stream -> XLogData (built here) or
 * whatever the Python twin makes of anything else. */
static PyObject *
envelope_of(const char *data, Py_ssize_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    if (n < 25 || p[0] != 'w') {
        PyObject *raw = PyBytes_FromStringAndSize(data, n);
        if (raw == NULL)
            return NULL;
        PyObject *item = PyObject_CallOneArg(envelope_fallback, raw);
        Py_DECREF(raw);
        return item;
    }
    PyObject *items[] = {make_lsn(be64(p + 1)), make_lsn(be64(p + 9)),
                         PyLong_FromLongLong((long long)be64(p + 17)),
                         PyBytes_FromStringAndSize(data + 25, n - 25)};
    return named(xlogdata_cls, 4, items);
}

static PyObject *
drain(PyObject *self, PyObject *args)
{
    unsigned long long get, release, conn;
    Py_ssize_t max_items;
    if (!PyArg_ParseTuple(args, "KKKn", &get, &release, &conn, &max_items))
        return NULL;
    if (xlogdata_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pgferry._speedups envelope is not configured");
        return NULL;
    }
    if (!get || !release || !conn) {
        PyErr_SetString(PyExc_ValueError, "drain: a null address");
        return NULL;
    }
    copy_get_fn get_copy_data = (copy_get_fn)(uintptr_t)get;
    copy_free_fn freemem = (copy_free_fn)(uintptr_t)release;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    int status = 1;
    while (PyList_GET_SIZE(out) < max_items) {
        char *data = NULL;
        int n = get_copy_data((void *)(uintptr_t)conn, &data, 1); /* 1: do not wait */
        if (n <= 0) {
            status = n;
            break;
        }
        PyObject *item = envelope_of(data, n);
        freemem(data);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return Py_BuildValue("(Ni)", out, status);
}


/* The libpq functions exchange calls, in the order of stream.libpq.Functions. */
typedef int (*send_query_fn)(void *, const char *);
typedef void *(*get_result_fn)(void *);
typedef int (*result_status_fn)(const void *);
typedef int (*put_copy_end_fn)(void *, const char *);
typedef char *(*cmd_tuples_fn)(void *);
typedef int (*ntuples_fn)(const void *);
typedef char *(*get_value_fn)(const void *, int, int);
typedef int (*get_is_null_fn)(const void *, int, int);
typedef int (*get_length_fn)(const void *, int, int);
typedef char *(*result_error_field_fn)(const void *, int);
typedef char *(*result_error_message_fn)(const void *);
typedef char *(*error_message_fn)(const void *);
typedef void (*clear_fn)(void *);

struct libpq {
    copy_get_fn get_copy_data;
    copy_put_fn put_copy_data;
    copy_free_fn freemem;
    send_query_fn send_query;
    get_result_fn get_result;
    result_status_fn result_status;
    put_copy_end_fn put_copy_end;
    cmd_tuples_fn cmd_tuples;
    ntuples_fn ntuples;
    get_value_fn get_value;
    get_is_null_fn get_is_null;
    get_length_fn get_length;
    result_error_field_fn result_error_field;
    result_error_message_fn result_error_message;
    error_message_fn error_message;
    clear_fn clear;
};

#define LIBPQ_FUNCTIONS 16
/* libpq-fe.h's ExecStatusType and PG_DIAG_SQLSTATE. */
#define PGRES_COPY_IN 4
#define PGRES_FATAL_ERROR 7
#define DIAG_SQLSTATE 'C'

static int
libpq_from(PyObject *functions, struct libpq *lib)
{
    void **slots = (void **)lib;
    PyObject *seq = PySequence_Fast(functions, "exchange: functions must be a sequence");
    if (seq == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != LIBPQ_FUNCTIONS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "exchange: not the libpq functions it needs");
        return -1;
    }
    for (Py_ssize_t i = 0; i < LIBPQ_FUNCTIONS; i++) {
        unsigned long long address = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (address == 0 || PyErr_Occurred()) {
            Py_DECREF(seq);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "exchange: a null address");
            return -1;
        }
        slots[i] = (void *)(uintptr_t)address;
    }
    Py_DECREF(seq);
    return 0;
}

struct exchange_state {
    void **results;
    Py_ssize_t nresults;
    Py_ssize_t capacity;
    int failed_send;  /* the query or a COPY's data could not be sent */
    int out_of_memory;
};

/* Runs without the GIL: send the query, feed each COPY IN the next of the
 * copies (an empty COPY when there are none left), keep every other result. */
static void
exchange_loop(const struct libpq *lib, void *conn, const char *query, Py_ssize_t ncopies,
              const char **copy_data, const Py_ssize_t *copy_size, struct exchange_state *st)
{
    Py_ssize_t next_copy = 0;
    if (lib->send_query(conn, query) != 1) {
        st->failed_send = 1;
        return;
    }
    for (;;) {
        void *res = lib->get_result(conn);
        if (res == NULL)
            return;
        if (lib->result_status(res) == PGRES_COPY_IN) {
            lib->clear(res);
            int ok = 1;
            if (next_copy < ncopies) {
                const char *data = copy_data[next_copy];
                Py_ssize_t left = copy_size[next_copy];
                next_copy++;
                /* PQputCopyData takes an int: large data goes in pieces. */
                while (ok && left > 0) {
                    int piece = left > (1 << 30) ? (1 << 30) : (int)left;
                    ok = lib->put_copy_data(conn, data, piece) == 1;
                    data += piece;
                    left -= piece;
                }
            }
            if (!ok || lib->put_copy_end(conn, NULL) != 1) {
                st->failed_send = 1;
                return;
            }
            continue;
        }
        if (st->nresults == st->capacity) {
            Py_ssize_t capacity = st->capacity ? st->capacity * 2 : 16;
            void **grown = realloc(st->results, (size_t)capacity * sizeof(void *));
            if (grown == NULL) {
                lib->clear(res);
                st->out_of_memory = 1;
                continue;  /* drain the rest: the connection must end up idle */
            }
            st->results = grown;
            st->capacity = capacity;
        }
        st->results[st->nresults++] = res;
    }
}

static PyObject *
result_tuple(const struct libpq *lib, void *res)
{
    int status = lib->result_status(res);
    const char *rows = lib->cmd_tuples(res);
    long long count = (rows != NULL && rows[0] != '\0') ? strtoll(rows, NULL, 10) : -1;
    PyObject *value;
    if (lib->ntuples(res) > 0 && !lib->get_is_null(res, 0, 0))
        value = PyBytes_FromStringAndSize(lib->get_value(res, 0, 0), lib->get_length(res, 0, 0));
    else
        value = Py_NewRef(Py_None);
    if (value == NULL)
        return NULL;
    return Py_BuildValue("(iLN)", status, count, value);
}

static PyObject *
exchange(PyObject *self, PyObject *args)
{
    PyObject *functions, *copies;
    unsigned long long conn;
    const char *query;
    struct libpq lib;
    if (!PyArg_ParseTuple(args, "OKyO!", &functions, &conn, &query, &PyTuple_Type, &copies))
        return NULL;
    if (!conn) {
        PyErr_SetString(PyExc_ValueError, "exchange: a null address");
        return NULL;
    }
    if (libpq_from(functions, &lib) < 0)
        return NULL;
    Py_ssize_t ncopies = PyTuple_GET_SIZE(copies);
    const char **copy_data = PyMem_Malloc(sizeof(char *) * (size_t)(ncopies + 1));
    Py_ssize_t *copy_size = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(ncopies + 1));
    if (copy_data == NULL || copy_size == NULL) {
        PyMem_Free(copy_data);
        PyMem_Free(copy_size);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < ncopies; i++) {
        PyObject *item = PyTuple_GET_ITEM(copies, i);
        if (!PyBytes_Check(item)) {
            PyMem_Free(copy_data);
            PyMem_Free(copy_size);
            PyErr_SetString(PyExc_TypeError, "exchange: copies must be bytes");
            return NULL;
        }
        /* The tuple holds the bytes (immutable) until this returns. */
        copy_data[i] = PyBytes_AS_STRING(item);
        copy_size[i] = PyBytes_GET_SIZE(item);
    }
    struct exchange_state st = {NULL, 0, 0, 0, 0};
    Py_BEGIN_ALLOW_THREADS
    exchange_loop(&lib, (void *)(uintptr_t)conn, query, ncopies, copy_data, copy_size, &st);
    Py_END_ALLOW_THREADS
    PyMem_Free(copy_data);
    PyMem_Free(copy_size);

    PyObject *results = PyList_New(0);
    PyObject *error = NULL;
    for (Py_ssize_t i = 0; i < st.nresults; i++) {
        void *res = st.results[i];
        if (results != NULL && error == NULL && lib.result_status(res) == PGRES_FATAL_ERROR) {
            const char *state = lib.result_error_field(res, DIAG_SQLSTATE);
            error = Py_BuildValue("(yy)", state ? state : "", lib.result_error_message(res));
            if (error == NULL)
                Py_CLEAR(results);
        }
        else if (results != NULL && error == NULL) {
            PyObject *item = result_tuple(&lib, res);
            if (item == NULL || PyList_Append(results, item) < 0)
                Py_CLEAR(results);
            Py_XDECREF(item);
        }
        lib.clear(res);
    }
    free(st.results);
    if (results == NULL) {
        Py_XDECREF(error);
        return NULL;
    }
    if (st.out_of_memory) {
        Py_XDECREF(error);
        Py_DECREF(results);
        return PyErr_NoMemory();
    }
    if (error == NULL && st.failed_send) {
        error = Py_BuildValue("(yy)", "", lib.error_message((void *)(uintptr_t)conn));
        if (error == NULL) {
            Py_DECREF(results);
            return NULL;
        }
    }
    if (error == NULL)
        error = Py_NewRef(Py_None);
    return Py_BuildValue("(NN)", results, error);
}

static PyMethodDef methods[] = {
    {"relay_copy", relay_copy, METH_VARARGS, "Relay one COPY from src to dst inside libpq."},
    {"configure", configure, METH_VARARGS, "Set the objects the functions produce or raise."},
    {"read_tuple", read_tuple, METH_VARARGS, "pgoutput TupleData -> (values, next offset)."},
    {"copy_line", copy_line, METH_VARARGS, "A row of COPY's text format, then tail (and n)."},
    {"configure_envelope", configure_envelope, METH_VARARGS, "Set the envelope's objects."},
    {"parse_copy_data", parse_copy_data, METH_O, "One CopyData message of a stream."},
    {"plain_width", plain_width, METH_O, "Total length, or -1 if a value is not plain."},
    {"configure_decoder", configure_decoder, METH_VARARGS, "Set the hot messages' classes."},
    {"decode_hot", (PyCFunction)(void (*)(void))decode_hot, METH_FASTCALL,
     "Begin/Commit/Insert/Update/Delete, or None."},
    {"drain", drain, METH_VARARGS, "The CopyData messages libpq has buffered, parsed."},
    {"exchange", exchange, METH_VARARGS, "One simple query with its COPYs, inside libpq."},
    {"stage_change", (PyCFunction)(void (*)(void))stage_change, METH_FASTCALL,
     "Stage the common changes; the width staged, or -1 for the Python twin."},
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
