/* One C function per worker stage, for benchmarks/stages.py (never imported by aiotask).

   stage_<name>(fn, *args) calls fn(*args) and returns its result. Under
   `valgrind --tool=callgrind` the inclusive cost of stage_<name> is then every instruction
   spent inside that call: callgrind sees C functions, not Python ones, so this is how a
   Python stage gets a name in its output. Each function bumps its own counter, so the
   compiler cannot fold them into one (identical code folding). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define STAGE(name)                                                                  \
    static volatile unsigned long calls_##name;                                      \
    __attribute__((noinline)) static PyObject *stage_##name(                         \
        PyObject *self, PyObject *const *args, Py_ssize_t nargs)                     \
    {                                                                                \
        calls_##name++;                                                              \
        if (nargs < 1) {                                                             \
            PyErr_SetString(PyExc_TypeError, "stage_" #name "(fn, *args)");          \
            return NULL;                                                             \
        }                                                                            \
        return PyObject_Vectorcall(args[0], args + 1, nargs - 1, NULL);              \
    }

STAGE(receive)
STAGE(accept)
STAGE(decode)
STAGE(run)
STAGE(encode)
STAGE(flush)
STAGE(store)
STAGE(ack)

#define ENTRY(name) {#name, (PyCFunction)(void (*)(void))stage_##name, METH_FASTCALL, NULL}

static PyMethodDef methods[] = {
    ENTRY(receive), ENTRY(accept), ENTRY(decode), ENTRY(run),
    ENTRY(encode), ENTRY(flush), ENTRY(store), ENTRY(ack),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stagemark", NULL, -1, methods};

PyMODINIT_FUNC PyInit__stagemark(void) { return PyModule_Create(&module); }
