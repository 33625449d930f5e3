/*
 * funloader._jpegdct: the CPython face of jpegdct_core.
 *
 * Narrow on purpose: it turns Python sources (a str path or a bytes-like object) and caller-owned
 * writable buffers into core calls made with the GIL released, and hands back plain tuples.
 * Exceptions, validation of shapes and every policy decision live in funloader/codec.py.
 *
 * Result tuples: (status, errno, message, warnings) with status one of the FL_* codes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "jpegdct_core.h"
#include "resize.h"

/* ---------------------------------------------------------------- sources */

typedef struct {
  PyObject *path; /* fs-encoded bytes when the source is a path, else NULL */
  Py_buffer view; /* the data when the source is bytes-like */
  int has_view;
} Source;

static int source_acquire(PyObject *object, Source *source) {
  memset(source, 0, sizeof *source);
  if (PyUnicode_Check(object)) {
    source->path = PyUnicode_EncodeFSDefault(object);
    if (source->path && strlen(PyBytes_AS_STRING(source->path)) != (size_t)PyBytes_GET_SIZE(source->path)) {
      /* as open(): "a.jpg\0.png" must not silently read "a.jpg" */
      Py_CLEAR(source->path);
      PyErr_SetString(PyExc_ValueError, "embedded null byte in a JPEG path");
    }
    return source->path ? 0 : -1;
  }
  if (PyObject_GetBuffer(object, &source->view, PyBUF_SIMPLE) != 0) {
    PyErr_Format(PyExc_TypeError, "a JPEG source must be a str path or a bytes-like object, not %.100s",
                 Py_TYPE(object)->tp_name);
    return -1;
  }
  source->has_view = 1;
  return 0;
}

static void source_release(Source *source) {
  Py_CLEAR(source->path);
  if (source->has_view) PyBuffer_Release(&source->view);
  source->has_view = 0;
}

/* Without the GIL: point data/size at the source's bytes (reading the file for a path). */
static int source_load(fl_decoder *decoder, const Source *source, const uint8_t **data, size_t *size,
                       fl_result *result) {
  if (source->path) return fl_load_file(decoder, PyBytes_AS_STRING(source->path), data, size, result);
  *data = (const uint8_t *)source->view.buf;
  *size = (size_t)source->view.len;
  result->status = FL_OK;
  result->num_warnings = 0;
  return FL_OK;
}

/* ---------------------------------------------------------------- conversions */

static PyObject *result_tuple(const fl_result *result) {
  int shown = result->num_warnings < FL_MAX_WARNINGS ? result->num_warnings : FL_MAX_WARNINGS;
  PyObject *warnings = PyList_New(0);
  if (!warnings) return NULL;
  for (int i = 0; i < shown; i++) {
    PyObject *text = PyUnicode_DecodeUTF8(result->warnings[i], strlen(result->warnings[i]), "replace");
    if (!text || PyList_Append(warnings, text) != 0) {
      Py_XDECREF(text);
      Py_DECREF(warnings);
      return NULL;
    }
    Py_DECREF(text);
  }
  if (result->num_warnings > shown) {
    PyObject *text = PyUnicode_FromFormat("(%d more warnings)", result->num_warnings - shown);
    if (!text || PyList_Append(warnings, text) != 0) {
      Py_XDECREF(text);
      Py_DECREF(warnings);
      return NULL;
    }
    Py_DECREF(text);
  }
  const char *message = result->status == FL_OK ? "" : result->message;
  return Py_BuildValue("(iisN)", result->status, result->os_errno, message, warnings);
}

static const char *colorspace_name(int colorspace) {
  switch (colorspace) {
    case FL_COLORSPACE_GRAY:
      return "gray";
    case FL_COLORSPACE_YCBCR:
      return "YCbCr";
    default:
      return "unknown";
  }
}

static PyObject *header_dict(const fl_header *header) {
  int n = header->num_components;
  PyObject *sampling = PyList_New(n), *blocks = PyList_New(n);
  if (!sampling || !blocks) goto fail;
  for (int c = 0; c < n; c++) {
    PyList_SET_ITEM(sampling, c, Py_BuildValue("(ii)", header->h_samp[c], header->v_samp[c]));
    PyList_SET_ITEM(blocks, c, Py_BuildValue("(ii)", header->blocks_h[c], header->blocks_w[c]));
  }
  PyObject *qtables = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n * 64 * 2);
  if (!qtables) goto fail;
  char *qtable_bytes = PyBytes_AS_STRING(qtables);
  for (int c = 0; c < n; c++) memcpy(qtable_bytes + (size_t)c * 128, header->qtables[c], 128);
  return Py_BuildValue("{s:i,s:i,s:i,s:s,s:O,s:O,s:N,s:N,s:N,s:(ii),s:s,s:s}", "width", header->width,
                       "height", header->height, "num_components", n, "colorspace",
                       colorspace_name(header->colorspace), "progressive",
                       header->progressive ? Py_True : Py_False, "arithmetic",
                       header->arithmetic ? Py_True : Py_False, "sampling", sampling, "blocks",
                       blocks, "qtables", qtables, "grid", header->grid_h, header->grid_w, "decoder",
                       header->own_decoder ? "funloader" : "libjpeg", "handover",
                       header->handover ? header->handover : "");
fail:
  Py_XDECREF(sampling);
  Py_XDECREF(blocks);
  return NULL;
}

/* ---------------------------------------------------------------- Decoder type */

typedef struct {
  PyObject_HEAD fl_decoder *decoder;
  int busy;
} DecoderObject;

static PyObject *Decoder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  DecoderObject *self = (DecoderObject *)type->tp_alloc(type, 0);
  if (!self) return NULL;
  self->decoder = fl_decoder_new();
  if (!self->decoder) {
    Py_DECREF(self);
    return PyErr_NoMemory();
  }
  return (PyObject *)self;
}

static void Decoder_dealloc(DecoderObject *self) {
  fl_decoder_free(self->decoder);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static int decoder_enter(DecoderObject *self) {
  if (self->busy) {
    PyErr_SetString(PyExc_RuntimeError, "a funloader Decoder is not re-entrant: use one per thread");
    return -1;
  }
  self->busy = 1;
  return 0;
}

/* Common start of read_fun/read_dct: take the source, mark the decoder busy, then (GIL released)
 * load the file and parse the header.  Returns -1 with a Python exception set (nothing to release),
 * else the FL_* status; on return >= 0 the caller owns `source` and must clear self->busy. */
static int decoder_open(DecoderObject *self, PyObject *source_object, Source *source, const fl_options *options,
                        fl_header *header, fl_result *result) {
  if (source_acquire(source_object, source) != 0) return -1;
  if (decoder_enter(self) != 0) {
    source_release(source);
    return -1;
  }
  const uint8_t *data = NULL;
  size_t size = 0;
  int status;
  Py_BEGIN_ALLOW_THREADS
  status = source_load(self->decoder, source, &data, &size, result);
  if (status == FL_OK) status = fl_begin(self->decoder, data, size, options, header, result);
  Py_END_ALLOW_THREADS
  return status;
}

/* read_fun(source, out, dtype, dequantize, strict, max_pixels, max_scans[, decoder])
 *   -> (out_or_new_bytearray_or_None, header_or_None, result) */
static PyObject *Decoder_read_fun(DecoderObject *self, PyObject *args) {
  PyObject *source_object, *out_object;
  int dtype, dequantize, strict, max_scans, decoder = FL_DECODER_AUTO;
  unsigned long long max_pixels;
  if (!PyArg_ParseTuple(args, "OOippKi|i", &source_object, &out_object, &dtype, &dequantize, &strict,
                        &max_pixels, &max_scans, &decoder))
    return NULL;
  if (dtype != FL_DTYPE_INT16 && dtype != FL_DTYPE_FLOAT32) {
    PyErr_SetString(PyExc_ValueError, "dtype code must be 0 (int16) or 1 (float32)");
    return NULL;
  }
  Source source;
  fl_options options = {strict, (uint64_t)max_pixels, max_scans, decoder};
  fl_header header;
  fl_result result;
  int status = decoder_open(self, source_object, &source, &options, &header, &result);
  if (status < 0) return NULL;

  PyObject *target = NULL, *answer = NULL;
  Py_buffer out_view;
  int has_out = 0;
  if (status == FL_OK) {
    size_t needed = (size_t)192 * header.grid_h * header.grid_w * fl_dtype_size(dtype);
    if (out_object == Py_None) {
      target = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)needed);
    } else {
      Py_INCREF(out_object);
      target = out_object;
    }
    if (!target || PyObject_GetBuffer(target, &out_view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) {
      fl_abort(self->decoder);
      goto done;
    }
    has_out = 1;
    if ((size_t)out_view.len != needed) {
      fl_abort(self->decoder);
      PyErr_Format(PyExc_ValueError, "out has %zd bytes, the image needs %zu (192 x %d x %d)",
                   out_view.len, needed, header.grid_h, header.grid_w);
      goto done;
    }
    void *buffer = out_view.buf;
    size_t length = (size_t)out_view.len;
    Py_BEGIN_ALLOW_THREADS
    status = fl_read_fun(self->decoder, &header, buffer, length, dtype, dequantize, header.grid_h,
                         header.grid_w, &result);
    Py_END_ALLOW_THREADS
  }
  if (status == FL_OK) {
    answer = Py_BuildValue("(ONN)", target, header_dict(&header), result_tuple(&result));
  } else {
    answer = Py_BuildValue("(OON)", Py_None, Py_None, result_tuple(&result));
  }
done:
  if (has_out) PyBuffer_Release(&out_view);
  Py_XDECREF(target);
  source_release(&source);
  self->busy = 0;
  return answer;
}

/* read_dct(source, strict, max_pixels, max_scans[, decoder]) -> (header_or_None, [bytearray...], result) */
static PyObject *Decoder_read_dct(DecoderObject *self, PyObject *args) {
  PyObject *source_object;
  int strict, max_scans, decoder = FL_DECODER_AUTO;
  unsigned long long max_pixels;
  if (!PyArg_ParseTuple(args, "OpKi|i", &source_object, &strict, &max_pixels, &max_scans, &decoder)) return NULL;
  Source source;
  fl_options options = {strict, (uint64_t)max_pixels, max_scans, decoder};
  fl_header header;
  fl_result result;
  int status = decoder_open(self, source_object, &source, &options, &header, &result);
  if (status < 0) return NULL;

  PyObject *arrays = NULL, *answer = NULL;
  if (status == FL_OK) {
    int16_t *planes[FL_MAX_COMPONENTS] = {NULL};
    arrays = PyList_New(header.num_components);
    if (!arrays) {
      fl_abort(self->decoder);
      goto done;
    }
    for (int c = 0; c < header.num_components; c++) {
      size_t bytes = (size_t)header.blocks_h[c] * header.blocks_w[c] * 64 * sizeof(int16_t);
      PyObject *plane = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)bytes);
      if (!plane) {
        fl_abort(self->decoder);
        goto done;
      }
      PyList_SET_ITEM(arrays, c, plane);
      planes[c] = (int16_t *)PyByteArray_AS_STRING(plane);
    }
    Py_BEGIN_ALLOW_THREADS
    status = fl_read_components(self->decoder, &header, planes, &result);
    Py_END_ALLOW_THREADS
  }
  if (status == FL_OK) {
    answer = Py_BuildValue("(NON)", header_dict(&header), arrays, result_tuple(&result));
  } else {
    answer = Py_BuildValue("(OON)", Py_None, Py_None, result_tuple(&result));
  }
done:
  Py_XDECREF(arrays);
  source_release(&source);
  self->busy = 0;
  return answer;
}

/* decoder_path(source, max_pixels) -> (own: bool, reason: str, result): which entropy decoder a
 * file takes under FL_DECODER_AUTO (result: the file could not be read when its status is not OK) */
static PyObject *Decoder_decoder_path(DecoderObject *self, PyObject *args) {
  PyObject *source_object;
  unsigned long long max_pixels;
  if (!PyArg_ParseTuple(args, "OK", &source_object, &max_pixels)) return NULL;
  Source source;
  if (source_acquire(source_object, &source) != 0) return NULL;
  if (decoder_enter(self) != 0) {
    source_release(&source);
    return NULL;
  }
  const uint8_t *data = NULL;
  size_t size = 0;
  fl_result result;
  char reason[FL_MESSAGE_LEN] = "";
  int own = 0;
  Py_BEGIN_ALLOW_THREADS
  if (source_load(self->decoder, &source, &data, &size, &result) == FL_OK)
    own = fl_decoder_path(self->decoder, data, size, (uint64_t)max_pixels, reason, sizeof reason);
  Py_END_ALLOW_THREADS
  source_release(&source);
  self->busy = 0;
  return Py_BuildValue("(NsN)", PyBool_FromLong(own), reason, result_tuple(&result));
}

/* read_resized(source, out, out_h8, out_w8, dtype, (top, left, height, width), support, chroma, strict,
 *              max_pixels, max_scans[, decoder]) -> (header_or_None, result): the exact resized crop into out. */
static PyObject *Decoder_read_resized(DecoderObject *self, PyObject *args) {
  PyObject *source_object, *out_object;
  int out_h8, out_w8, dtype, support, chroma, strict, max_scans, decoder = FL_DECODER_AUTO;
  fl_resize_spec spec;
  unsigned long long max_pixels;
  if (!PyArg_ParseTuple(args, "OOiii(dddd)iipKi|i", &source_object, &out_object, &out_h8, &out_w8, &dtype, &spec.top,
                        &spec.left, &spec.height, &spec.width, &support, &chroma, &strict, &max_pixels, &max_scans,
                        &decoder))
    return NULL;
  spec.support = support;
  spec.chroma = chroma;
  Source source;
  if (source_acquire(source_object, &source) != 0) return NULL;
  Py_buffer out_view;
  if (PyObject_GetBuffer(out_object, &out_view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) {
    source_release(&source);
    return NULL;
  }
  if (decoder_enter(self) != 0) {
    PyBuffer_Release(&out_view);
    source_release(&source);
    return NULL;
  }
  fl_options options = {strict, (uint64_t)max_pixels, max_scans, decoder};
  fl_header header;
  fl_result result;
  int status;
  void *buffer = out_view.buf;
  size_t length = (size_t)out_view.len;
  Py_BEGIN_ALLOW_THREADS
  const uint8_t *data = NULL;
  size_t size = 0;
  status = source_load(self->decoder, &source, &data, &size, &result);
  if (status == FL_OK)
    status = fl_decode_fun_resized(self->decoder, data, size, &options, buffer, length, dtype, out_h8, out_w8, &spec,
                                   NULL, &header, &result);
  Py_END_ALLOW_THREADS
  PyObject *answer = status == FL_OK ? Py_BuildValue("(NN)", header_dict(&header), result_tuple(&result))
                                     : Py_BuildValue("(ON)", Py_None, result_tuple(&result));
  PyBuffer_Release(&out_view);
  source_release(&source);
  self->busy = 0;
  return answer;
}

static PyMethodDef Decoder_methods[] = {
    {"read_resized", (PyCFunction)Decoder_read_resized, METH_VARARGS,
     "read_resized(source, out, out_h8, out_w8, dtype, box, support, chroma, strict, max_pixels, max_scans[, decoder]) -> "
     "(header, result)"},
    {"read_fun", (PyCFunction)Decoder_read_fun, METH_VARARGS,
     "read_fun(source, out, dtype, dequantize, strict, max_pixels, max_scans[, decoder]) -> (out, header, result)"},
    {"read_dct", (PyCFunction)Decoder_read_dct, METH_VARARGS,
     "read_dct(source, strict, max_pixels, max_scans[, decoder]) -> (header, planes, result)"},
    {"decoder_path", (PyCFunction)Decoder_decoder_path, METH_VARARGS,
     "decoder_path(source, max_pixels) -> (own, reason, result)"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "funloader._jpegdct.Decoder",
    .tp_basicsize = sizeof(DecoderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A reusable libjpeg decompressor (one per thread).",
    .tp_new = Decoder_new,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
};

/* ---------------------------------------------------------------- batches */

typedef struct {
  Source *sources;
  fl_result *results;
  Py_ssize_t count;
  atomic_long next;
  uint8_t *out;
  size_t item_bytes;
  int out_h8, out_w8, dtype, dequantize;
  fl_options options;
  const int32_t *row_maps, *col_maps; /* optional (N, out_h8) / (N, out_w8) block maps */
  const float *gains, *bias;          /* optional (N, 192) gains and (N, 192) biases */
  const double *boxes;                /* optional (N, 4) exact resized-crop boxes (resize.h) */
  int support, chroma;
  int64_t *sizes;                     /* read_sizes: (N, 2) (height, width) out, headers only */
  Py_ssize_t acquired;                /* sources acquired so far (released by job_close) */
} BatchJob;

/* Decoders kept between batches (their file buffer, coefficient and resize scratch are reused: no allocation per
 * batch in steady state).  Lock-free slots, so a fork() in the middle of a batch cannot leave a lock held. */
#define POOL_SLOTS 64
static _Atomic(fl_decoder *) decoder_pool[POOL_SLOTS];

static fl_decoder *pool_take(void) {
  for (int i = 0; i < POOL_SLOTS; i++) {
    fl_decoder *decoder = atomic_exchange(&decoder_pool[i], NULL);
    if (decoder) return decoder;
  }
  return fl_decoder_new();
}

static void pool_give(fl_decoder *decoder) {
  if (!decoder) return;
  for (int i = 0; i < POOL_SLOTS; i++) {
    fl_decoder *expected = NULL;
    if (atomic_compare_exchange_strong(&decoder_pool[i], &expected, decoder)) return;
  }
  fl_decoder_free(decoder);
}

/* Items up to this size are laid out in the decoder's stage (fl_stage), in cache, and then copied to
 * their slot; bigger ones are laid out in place. */
#define STAGE_MAX_BYTES ((size_t)1 << 20)

static void *batch_worker(void *argument) {
  BatchJob *job = (BatchJob *)argument;
  fl_decoder *decoder = pool_take();
  uint8_t *stage = NULL;
  if (decoder && !job->sizes && job->count > 1 && job->item_bytes <= STAGE_MAX_BYTES)
    stage = (uint8_t *)fl_stage(decoder, job->item_bytes);
  for (;;) {
    long index = atomic_fetch_add(&job->next, 1);
    if (index >= job->count) break;
    fl_result *result = &job->results[index];
    uint8_t *target = job->sizes ? NULL : job->out + (size_t)index * job->item_bytes;
    uint8_t *slot = stage ? stage : target;
    if (!decoder) {
      result->status = FL_ERR_NOMEM;
      snprintf(result->message, FL_MESSAGE_LEN, "out of memory creating a decoder");
      if (target) memset(target, 0, job->item_bytes);
      continue;
    }
    const uint8_t *data;
    size_t size;
    fl_header header;
    if (job->sizes) {
      if (source_load(decoder, &job->sources[index], &data, &size, result) == FL_OK &&
          fl_read_size(decoder, data, size, &job->options, &header, result) == FL_OK) {
        job->sizes[2 * index] = header.height;
        job->sizes[2 * index + 1] = header.width;
      }
      continue;
    }
    if (source_load(decoder, &job->sources[index], &data, &size, result) != FL_OK) {
      memset(target, 0, job->item_bytes);
      continue;
    }
    fl_mapping mapping = {job->row_maps ? job->row_maps + (size_t)index * job->out_h8 : NULL,
                          job->col_maps ? job->col_maps + (size_t)index * job->out_w8 : NULL,
                          job->gains ? job->gains + (size_t)index * 192 : NULL,
                          job->bias ? job->bias + (size_t)index * 192 : NULL};
    int mapped = job->row_maps || job->col_maps || job->gains;
    if (job->boxes) {
      const double *box = job->boxes + (size_t)index * 4;
      fl_resize_spec spec = {box[0], box[1], box[2], box[3], job->support, job->chroma};
      fl_decode_fun_resized(decoder, data, size, &job->options, slot, job->item_bytes, job->dtype, job->out_h8,
                            job->out_w8, &spec, mapped ? &mapping : NULL, &header, result);
    } else {
      fl_decode_fun_mapped(decoder, data, size, &job->options, slot, job->item_bytes, job->dtype, job->dequantize,
                           job->out_h8, job->out_w8, mapped ? &mapping : NULL, &header, result);
    }
    if (stage) fl_copy_out(target, stage, job->item_bytes); /* every outcome wrote the whole item (or zeros) */
  }
  pool_give(decoder);
  return NULL;
}

/* Zeroes `job`, sets its options and takes its N sources from `items`; -1 with an exception set (call
 * job_close in every case). */
static int job_open(BatchJob *job, PyObject *items, int strict, unsigned long long max_pixels, int max_scans) {
  Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
  memset(job, 0, sizeof *job);
  job->count = count;
  job->options.strict = strict;
  job->options.max_pixels = (uint64_t)max_pixels;
  job->options.max_scans = max_scans;
  atomic_init(&job->next, 0);
  job->sources = (Source *)PyMem_Calloc((size_t)(count ? count : 1), sizeof(Source));
  job->results = (fl_result *)PyMem_Calloc((size_t)(count ? count : 1), sizeof(fl_result));
  if (!job->sources || !job->results) {
    PyErr_NoMemory();
    return -1;
  }
  for (; job->acquired < count; job->acquired++)
    if (source_acquire(PySequence_Fast_GET_ITEM(items, job->acquired), &job->sources[job->acquired]) != 0) return -1;
  return 0;
}

static void job_close(BatchJob *job) {
  for (Py_ssize_t i = 0; i < job->acquired; i++) source_release(&job->sources[i]);
  PyMem_Free(job->sources);
  PyMem_Free(job->results);
}

/* Runs `job` on `threads` native threads (the calling one included) with the GIL released, then returns
 * the per-item list: None for an item that succeeded without warnings, else its result tuple. */
static PyObject *run_job(BatchJob *job, int threads) {
  const Py_ssize_t count = job->count;
  if (threads < 1) threads = 1;
  if (threads > count) threads = (int)(count ? count : 1);
  if (threads > 256) threads = 256;
  Py_BEGIN_ALLOW_THREADS
  pthread_t workers[256];
  int started = 0;
  for (int t = 1; t < threads; t++) {
    if (pthread_create(&workers[started], NULL, batch_worker, job) == 0) started++;
  }
  batch_worker(job); /* the calling thread works too */
  for (int t = 0; t < started; t++) pthread_join(workers[t], NULL);
  Py_END_ALLOW_THREADS
  PyObject *answer = PyList_New(count);
  if (!answer) return NULL;
  for (Py_ssize_t i = 0; i < count; i++) {
    PyObject *entry;
    if (job->results[i].status == FL_OK && job->results[i].num_warnings == 0) {
      entry = Py_None;
      Py_INCREF(entry);
    } else if (!(entry = result_tuple(&job->results[i]))) {
      Py_DECREF(answer);
      return NULL;
    }
    PyList_SET_ITEM(answer, i, entry);
  }
  return answer;
}

/* Read-only view of an optional C-contiguous array of exactly `bytes` bytes (None: has = 0). */
static int optional_view(PyObject *object, Py_buffer *view, int *has, size_t bytes, const char *name) {
  *has = 0;
  if (object == Py_None) return 0;
  if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS) != 0) return -1;
  *has = 1;
  if ((size_t)view->len != bytes) {
    PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zu", name, view->len, bytes);
    return -1;
  }
  return 0;
}

/* decode_batch(sources, out, out_h8, out_w8, dtype, dequantize, threads, strict, max_pixels,
 *              max_scans[, row_maps, col_maps, gains, bias, boxes, support, chroma, decoder])
 *   -> [None or result tuple per item] (None: decoded without warnings)
 * row_maps int32 (N, out_h8), col_maps int32 (N, out_w8), gains float32 (N, 192), bias float32 (N, 192):
 * see fl_mapping; None for each that is not used. */
static PyObject *decode_batch(PyObject *module, PyObject *args) {
  PyObject *sequence, *out_object;
  PyObject *row_object = Py_None, *col_object = Py_None, *gain_object = Py_None, *bias_object = Py_None;
  PyObject *box_object = Py_None;
  int out_h8, out_w8, dtype, dequantize, threads, strict, max_scans, support = FL_SUPPORT_BOX, chroma = FL_CHROMA_420,
      decoder = FL_DECODER_AUTO;
  unsigned long long max_pixels;
  if (!PyArg_ParseTuple(args, "OOiiipipKi|OOOOOiii", &sequence, &out_object, &out_h8, &out_w8, &dtype,
                        &dequantize, &threads, &strict, &max_pixels, &max_scans, &row_object, &col_object,
                        &gain_object, &bias_object, &box_object, &support, &chroma, &decoder))
    return NULL;
  if (dtype != FL_DTYPE_INT16 && dtype != FL_DTYPE_FLOAT32) {
    PyErr_SetString(PyExc_ValueError, "dtype code must be 0 (int16) or 1 (float32)");
    return NULL;
  }
  if (out_h8 <= 0 || out_w8 <= 0) {
    PyErr_SetString(PyExc_ValueError, "out_h8 and out_w8 must be positive");
    return NULL;
  }
  PyObject *items = PySequence_Fast(sequence, "sources must be a sequence");
  if (!items) return NULL;
  Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
  BatchJob job;
  PyObject *answer = NULL;
  Py_buffer out_view, row_view, col_view, gain_view, bias_view, box_view;
  int has_out = 0, has_rows = 0, has_cols = 0, has_gains = 0, has_bias = 0, has_boxes = 0;
  if (job_open(&job, items, strict, max_pixels, max_scans) != 0) goto done;
  job.item_bytes = (size_t)192 * out_h8 * out_w8 * fl_dtype_size(dtype);
  job.out_h8 = out_h8;
  job.out_w8 = out_w8;
  job.dtype = dtype;
  job.dequantize = dequantize;
  job.options.decoder = decoder;
  if (PyObject_GetBuffer(out_object, &out_view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) goto done;
  has_out = 1;
  if ((size_t)out_view.len < job.item_bytes * (size_t)count) {
    PyErr_Format(PyExc_ValueError, "out has %zd bytes, %zd items need %zu", out_view.len, count,
                 job.item_bytes * (size_t)count);
    goto done;
  }
  job.out = (uint8_t *)out_view.buf;
  if (optional_view(row_object, &row_view, &has_rows, (size_t)count * out_h8 * 4, "row_maps") != 0 ||
      optional_view(col_object, &col_view, &has_cols, (size_t)count * out_w8 * 4, "col_maps") != 0 ||
      optional_view(gain_object, &gain_view, &has_gains, (size_t)count * 192 * 4, "gains") != 0 ||
      optional_view(bias_object, &bias_view, &has_bias, (size_t)count * 192 * 4, "bias") != 0 ||
      optional_view(box_object, &box_view, &has_boxes, (size_t)count * 4 * sizeof(double), "boxes") != 0)
    goto done;
  job.boxes = has_boxes ? (const double *)box_view.buf : NULL;
  job.support = support;
  job.chroma = chroma;
  if (has_gains != has_bias || (has_gains && dtype != FL_DTYPE_FLOAT32)) {
    PyErr_SetString(PyExc_ValueError, "gains and bias go together, with a float32 output");
    goto done;
  }
  job.row_maps = has_rows ? (const int32_t *)row_view.buf : NULL;
  job.col_maps = has_cols ? (const int32_t *)col_view.buf : NULL;
  job.gains = has_gains ? (const float *)gain_view.buf : NULL;
  job.bias = has_bias ? (const float *)bias_view.buf : NULL;
  answer = run_job(&job, threads);
done:
  job_close(&job);
  if (has_out) PyBuffer_Release(&out_view);
  if (has_rows) PyBuffer_Release(&row_view);
  if (has_cols) PyBuffer_Release(&col_view);
  if (has_gains) PyBuffer_Release(&gain_view);
  if (has_bias) PyBuffer_Release(&bias_view);
  if (has_boxes) PyBuffer_Release(&box_view);
  Py_DECREF(items);
  return answer;
}

/* read_sizes(sources, sizes, threads, strict, max_pixels, max_scans) -> [None or result tuple per item]
 * sizes: writable int64 (N, 2) buffer, filled with (height, width) from the headers (native threads). */
static PyObject *read_sizes(PyObject *module, PyObject *args) {
  PyObject *sequence, *sizes_object;
  int threads, strict, max_scans;
  unsigned long long max_pixels;
  if (!PyArg_ParseTuple(args, "OOipKi", &sequence, &sizes_object, &threads, &strict, &max_pixels, &max_scans))
    return NULL;
  PyObject *items = PySequence_Fast(sequence, "sources must be a sequence");
  if (!items) return NULL;
  BatchJob job;
  PyObject *answer = NULL;
  Py_buffer sizes_view;
  int has_sizes = 0;
  if (job_open(&job, items, strict, max_pixels, max_scans) != 0) goto done;
  if (PyObject_GetBuffer(sizes_object, &sizes_view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) goto done;
  has_sizes = 1;
  if ((size_t)sizes_view.len != (size_t)job.count * 2 * sizeof(int64_t)) {
    PyErr_Format(PyExc_ValueError, "sizes has %zd bytes, %zd items need %zu", sizes_view.len, job.count,
                 (size_t)job.count * 2 * sizeof(int64_t));
    goto done;
  }
  job.sizes = (int64_t *)sizes_view.buf;
  answer = run_job(&job, threads);
done:
  job_close(&job);
  if (has_sizes) PyBuffer_Release(&sizes_view);
  Py_DECREF(items);
  return answer;
}

static PyObject *resize_simd(PyObject *module, PyObject *unused) { return PyUnicode_FromString(fl_resize_simd()); }

static PyObject *libjpeg_version(PyObject *module, PyObject *unused) {
  return PyLong_FromLong(fl_libjpeg_version());
}

static PyMethodDef module_methods[] = {
    {"decode_batch", decode_batch, METH_VARARGS,
     "decode_batch(sources, out, out_h8, out_w8, dtype, dequantize, threads, strict, max_pixels, "
     "max_scans) -> per-item results"},
    {"read_sizes", read_sizes, METH_VARARGS,
     "read_sizes(sources, sizes, threads, strict, max_pixels, max_scans) -> per-item results (headers only)"},
    {"resize_simd", resize_simd, METH_NOARGS, "SIMD path of the exact resized crop kernel"},
    {"libjpeg_version", libjpeg_version, METH_NOARGS, "libjpeg-turbo version number, e.g. 2001005"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_definition = {PyModuleDef_HEAD_INIT, "_jpegdct",
                                               "Quantized DCT coefficients from JPEG (libjpeg-turbo).",
                                               -1, module_methods};

PyMODINIT_FUNC PyInit__jpegdct(void) {
  if (PyType_Ready(&DecoderType) < 0) return NULL;
  PyObject *module = PyModule_Create(&module_definition);
  if (!module) return NULL;
  Py_INCREF(&DecoderType);
  if (PyModule_AddObject(module, "Decoder", (PyObject *)&DecoderType) < 0) {
    Py_DECREF(&DecoderType);
    Py_DECREF(module);
    return NULL;
  }
  PyModule_AddIntConstant(module, "OK", FL_OK);
  PyModule_AddIntConstant(module, "ERR_DECODE", FL_ERR_DECODE);
  PyModule_AddIntConstant(module, "ERR_UNSUPPORTED", FL_ERR_UNSUPPORTED);
  PyModule_AddIntConstant(module, "ERR_TOO_LARGE", FL_ERR_TOO_LARGE);
  PyModule_AddIntConstant(module, "ERR_IO", FL_ERR_IO);
  PyModule_AddIntConstant(module, "ERR_NOMEM", FL_ERR_NOMEM);
  PyModule_AddIntConstant(module, "ERR_ARGUMENT", FL_ERR_ARGUMENT);
  PyModule_AddIntConstant(module, "ERR_BOX", FL_ERR_BOX);
  PyModule_AddIntConstant(module, "SUPPORT_BOX", FL_SUPPORT_BOX);
  PyModule_AddIntConstant(module, "SUPPORT_IMAGE", FL_SUPPORT_IMAGE);
  PyModule_AddIntConstant(module, "CHROMA_420", FL_CHROMA_420);
  PyModule_AddIntConstant(module, "CHROMA_444", FL_CHROMA_444);
  PyModule_AddIntConstant(module, "DTYPE_INT16", FL_DTYPE_INT16);
  PyModule_AddIntConstant(module, "DTYPE_FLOAT32", FL_DTYPE_FLOAT32);
  PyModule_AddIntConstant(module, "MAX_COMPONENTS", FL_MAX_COMPONENTS);
  PyModule_AddIntConstant(module, "DECODER_AUTO", FL_DECODER_AUTO);
  PyModule_AddIntConstant(module, "DECODER_LIBJPEG", FL_DECODER_LIBJPEG);
  return module;
}
