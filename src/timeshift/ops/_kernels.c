/*
 * Native temporal shift for CPU tensors, channels_last and contiguous.
 *
 * In channels_last memory a (N*T, C, H, W) tensor is a sequence of rows of C channels, one row
 * per (n, t, h, w). Each output row takes its first groups of `fold` channels from the same pixel
 * of frame t + offset and the rest from frame t. Written with PyTorch slice copies this is three
 * strided passes whose inner runs are only `fold` elements long, and the per-run loop overhead,
 * not memory bandwidth, dominates. Here the work is split into units of (video, block of pixel
 * rows); for t = 0..T-1 a unit copies the block of frame t with one memcpy, then patches the
 * shifted groups from frames t +/- 1. A unit's T blocks fit in L2, so the patch reads hit cache
 * (the block of frame t+1 read while patching frame t is the one copied next) and memory sees
 * about one read and one write of the tensor, like a copy.
 *
 * Parallelised with OpenMP. PyTorch's CPU build loads its own libgomp.so.1 first, and the
 * dynamic loader binds this module to that already-loaded runtime, so the loop runs on PyTorch's
 * thread pool instead of competing with it.
 *
 * The Python side passes raw pointers of tensors it has validated (CPU, dense in one of the two
 * layouts, same shape and dtype); this file knows nothing about torch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_GROUPS 8
/* bytes of a unit's T blocks: comfortably inside a core's L2 cache */
#define UNIT_BYTES (512 << 10)
/* below this many bytes a parallel region costs more than it saves */
#define PARALLEL_BYTES (256 << 10)

typedef struct {
    const char *src;
    char *dst;
    int64_t videos, segments, pixels;
    int64_t row_bytes, fold_bytes;
    int groups;
    int offsets[MAX_GROUPS];
} Geometry;

static void shift_block(const Geometry *g, int64_t video, int64_t t, int64_t p0, int64_t p1) {
    const int64_t frame = video * g->segments + t;
    const int64_t rb = g->row_bytes, fb = g->fold_bytes;
    char *out = g->dst + (frame * g->pixels + p0) * rb;
    const int64_t rows = p1 - p0;
    memcpy(out, g->src + (frame * g->pixels + p0) * rb, (size_t)(rows * rb));
    for (int k = 0; k < g->groups; ++k) {
        const int64_t source_t = t + g->offsets[k];
        char *piece = out + k * fb;
        if (source_t < 0 || source_t >= g->segments) {
            for (int64_t r = 0; r < rows; ++r) {
                memset(piece + r * rb, 0, (size_t)fb);
            }
            continue;
        }
        const char *in = g->src + ((frame + g->offsets[k]) * g->pixels + p0) * rb + k * fb;
        for (int64_t r = 0; r < rows; ++r) {
            memcpy(piece + r * rb, in + r * rb, (size_t)fb);
        }
    }
}

static void shift_rows(const Geometry *g) {
    int64_t block = UNIT_BYTES / (g->segments * g->row_bytes);
    if (block < 1) {
        block = 1;
    }
    const int64_t blocks = (g->pixels + block - 1) / block;
    const int64_t units = g->videos * blocks;
    const int parallel = g->videos * g->segments * g->pixels * g->row_bytes > PARALLEL_BYTES;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t unit = 0; unit < units; ++unit) {
        const int64_t video = unit / blocks;
        const int64_t p0 = (unit % blocks) * block;
        const int64_t p1 = p0 + block < g->pixels ? p0 + block : g->pixels;
        for (int64_t t = 0; t < g->segments; ++t) {
            shift_block(g, video, t, p0, p1);
        }
    }
}

/* Contiguous (N*T, C, H, W): a frame is one run of C*H*W elements and each channel group one
 * run of fold*H*W inside it, so the shift is a handful of long memcpys per frame. Frames are cut
 * into chunks of CHUNK_BYTES so that all threads get work even for a single video. */
#define CHUNK_BYTES (256 << 10)

static void copy_piece(const Geometry *g, int64_t frame, int64_t t, int64_t from, int64_t to) {
    /* output bytes [from, to) of one frame; group k is [k*fb, (k+1)*fb), the rest after */
    const int64_t fb = g->fold_bytes, fbytes = g->row_bytes;
    char *out = g->dst + frame * fbytes;
    while (from < to) {
        const int k = (int)(from / fb);
        if (k >= g->groups) {
            memcpy(out + from, g->src + frame * fbytes + from, (size_t)(to - from));
            return;
        }
        const int64_t end = (k + 1) * fb < to ? (k + 1) * fb : to;
        const int64_t source_t = t + g->offsets[k];
        if (source_t < 0 || source_t >= g->segments) {
            memset(out + from, 0, (size_t)(end - from));
        } else {
            memcpy(out + from, g->src + (frame + g->offsets[k]) * fbytes + from,
                   (size_t)(end - from));
        }
        from = end;
    }
}

static void shift_frames(const Geometry *g) {
    const int64_t frames = g->videos * g->segments;
    const int64_t chunks = (g->row_bytes + CHUNK_BYTES - 1) / CHUNK_BYTES;
    const int parallel = frames * g->row_bytes > PARALLEL_BYTES;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t unit = 0; unit < frames * chunks; ++unit) {
        const int64_t frame = unit / chunks;
        const int64_t from = (unit % chunks) * CHUNK_BYTES;
        const int64_t to = from + CHUNK_BYTES < g->row_bytes ? from + CHUNK_BYTES : g->row_bytes;
        copy_piece(g, frame, frame % g->segments, from, to);
    }
}

/* shift(src_ptr, dst_ptr, frames, segments, pixels, row_bytes, fold_bytes, offsets)
 *
 * channels_last when pixels > 1 (rows of row_bytes = C * itemsize, groups of fold_bytes);
 * contiguous when pixels == 1 (one "row" per frame of C*H*W * itemsize, groups of
 * fold*H*W * itemsize).
 */
static PyObject *shift(PyObject *self, PyObject *args) {
    unsigned long long src, dst;
    long long frames, segments, pixels, row_bytes, fold_bytes;
    PyObject *offsets;
    if (!PyArg_ParseTuple(args, "KKLLLLLO", &src, &dst, &frames, &segments, &pixels, &row_bytes,
                          &fold_bytes, &offsets)) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(offsets, "offsets must be a sequence of ints");
    if (seq == NULL) {
        return NULL;
    }
    Geometry g;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count < 1 || count > MAX_GROUPS || segments < 1 || frames % segments != 0 ||
        fold_bytes < 1 || count * fold_bytes > row_bytes || pixels < 1) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "shift: invalid geometry");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; ++i) {
        const long value = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (value == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        if (value != 1 && value != -1) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "shift: offsets must be +1 or -1");
            return NULL;
        }
        g.offsets[i] = (int)value;
    }
    Py_DECREF(seq);
    g.src = (const char *)(uintptr_t)src;
    g.dst = (char *)(uintptr_t)dst;
    g.videos = frames / segments;
    g.segments = segments;
    g.pixels = pixels;
    g.row_bytes = row_bytes;
    g.fold_bytes = fold_bytes;
    g.groups = (int)count;
    Py_BEGIN_ALLOW_THREADS;
    if (pixels > 1) {
        shift_rows(&g);
    } else {
        shift_frames(&g);
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"shift", shift, METH_VARARGS,
     "Temporal shift of a channels_last or contiguous buffer into another (raw pointers)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
