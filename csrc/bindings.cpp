// The only file that knows about Python: argument checks, GIL release, zero-copy views.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "exact_search.hpp"
#include "hamming.hpp"
#include "refine.hpp"
#include "shard_file.hpp"
#include "simd.hpp"
#include "topk.hpp"

namespace py = pybind11;
using namespace pybind11::literals;
using fastmarco::DType;

namespace {

// Every array that crosses into C++ goes through `checked` or `checked_rows`: dtype, shape (against
// the caller's own dim where it has one), C order, alignment and, for outputs, writeability. A
// failed check is std::invalid_argument, which reaches Python as fastmarco.errors.InputError.
[[noreturn]] void bad_input(const std::string& message) { throw std::invalid_argument(message); }

std::string shape_text(const py::array& a) {
  std::string text = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) text += (i ? ", " : "") + std::to_string(a.shape(i));
  return text + (a.ndim() == 1 ? ",)" : ")");
}

constexpr py::ssize_t kAny = -1;

// The names of a list of kernels or variants, in order, for Python.
template <typename T>
std::vector<std::string> names_of(const std::vector<T>& items, std::string (*name)(T)) {
  std::vector<std::string> names;
  for (const T item : items) names.push_back(name(item));
  return names;
}

void check_layout(const py::array& a, const char* name, std::initializer_list<py::ssize_t> shape, bool output,
                  std::size_t alignment) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  std::string want = "(";
  py::ssize_t i = 0;
  for (const auto s : shape) {
    if (ok && s != kAny && a.shape(i) != s) ok = false;
    want += (i ? ", " : "") + (s == kAny ? std::string("n") : std::to_string(s));
    ++i;
  }
  want += shape.size() == 1 ? ",)" : ")";
  if (!ok) bad_input(std::string(name) + " must have shape " + want + ", got " + shape_text(a));
  if (!(a.flags() & py::array::c_style)) {
    bad_input(std::string(name) + " must be C-contiguous; pass numpy.ascontiguousarray(" + name + ")");
  }
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignment != 0) {
    bad_input(std::string(name) + " is not aligned to its dtype; pass numpy.ascontiguousarray(" + name + ")");
  }
  if (output && !a.writeable()) bad_input(std::string(name) + " must be writeable (it is read-only)");
}

// An array of exactly dtype T and the given shape (kAny: any size), checked as above.
template <typename T>
T* checked(const py::array& a, const char* name, std::initializer_list<py::ssize_t> shape, bool output = false) {
  if (!a.dtype().is(py::dtype::of<T>())) {
    bad_input(std::string(name) + " must have dtype " + py::str(py::dtype::of<T>()).cast<std::string>() + ", got " +
              py::str(a.dtype()).cast<std::string>());
  }
  check_layout(a, name, shape, output, alignof(T));
  return static_cast<T*>(const_cast<void*>(a.data()));
}

struct Rows {
  const void* data;
  DType dtype;
  py::ssize_t count;
};

// A (n, dim) float16 or float32 array; dim == kAny accepts any positive width.
Rows checked_rows(const py::array& a, const char* name, py::ssize_t dim) {
  const auto dt = a.dtype();
  DType dtype;
  if (dt.is(py::dtype::of<float>())) {
    dtype = DType::Float32;
  } else if (dt.is(py::dtype("float16"))) {
    dtype = DType::Float16;
  } else {
    bad_input(std::string(name) + " must be float32 or float16, got " + py::str(dt).cast<std::string>() +
              "; convert with .astype(numpy.float32)");
  }
  check_layout(a, name, {kAny, dim}, false, dtype_size(dtype));
  if (a.shape(1) == 0) bad_input(std::string(name) + " must have a positive dim");
  return {a.data(), dtype, a.shape(0)};
}

fastmarco::Metric metric_from_name(const std::string& name) {
  if (name == "ip" || name == "dot") return fastmarco::Metric::InnerProduct;
  if (name == "cosine") return fastmarco::Metric::Cosine;
  bad_input("metric must be 'ip' (inner product) or 'cosine', got '" + name + "'");
}

void check_k(std::int64_t k) {
  if (k <= 0) bad_input("k must be positive, got " + std::to_string(k));
}

void exact_search_py(const py::array& queries, const py::array& rows, std::int64_t k, const std::string& metric,
                     const py::array& out_scores, const py::array& out_ids, int threads) {
  const auto* q = checked<float>(queries, "queries", {kAny, kAny});
  const py::ssize_t nq = queries.shape(0), dim = queries.shape(1);
  if (dim == 0) bad_input("queries must have a positive dim");
  const Rows r = checked_rows(rows, "rows", dim);
  check_k(k);
  auto* s = checked<float>(out_scores, "out_scores", {nq, k}, true);
  auto* i = checked<std::int64_t>(out_ids, "out_ids", {nq, k}, true);
  const fastmarco::SearchOptions options{metric_from_name(metric), threads};
  py::gil_scoped_release release;
  fastmarco::exact_search(q, nq, dim, r.data, r.dtype, r.count, k, options, s, i);
}

void merge_topk_py(const py::array& scores, const py::array& ids, const py::array& id_offsets,
                   const py::array& out_scores, const py::array& out_ids) {
  const auto* s = checked<float>(scores, "scores", {kAny, kAny, kAny});
  const py::ssize_t nshard = scores.shape(0), nq = scores.shape(1), k = scores.shape(2);
  const auto* i = checked<std::int64_t>(ids, "ids", {nshard, nq, k});
  const auto* o = checked<std::int64_t>(id_offsets, "id_offsets", {nshard});
  auto* os = checked<float>(out_scores, "out_scores", {nq, k}, true);
  auto* oi = checked<std::int64_t>(out_ids, "out_ids", {nq, k}, true);
  py::gil_scoped_release release;
  fastmarco::merge_topk(s, i, o, nshard, nq, k, os, oi);
}

void refine_topk_py(const py::array& queries, const std::vector<py::array>& shards, const py::array& candidates,
                    std::int64_t k, const std::string& metric, const py::array& out_scores, const py::array& out_ids,
                    int threads) {
  const auto* q = checked<float>(queries, "queries", {kAny, kAny});
  const py::ssize_t nq = queries.shape(0), dim = queries.shape(1);
  if (dim == 0) bad_input("queries must have a positive dim");
  const auto* c = checked<std::int64_t>(candidates, "candidates", {nq, kAny});
  check_k(k);
  auto* s = checked<float>(out_scores, "out_scores", {nq, k}, true);
  auto* i = checked<std::int64_t>(out_ids, "out_ids", {nq, k}, true);
  std::vector<fastmarco::RowBlock> blocks;
  for (const auto& rows : shards) {
    const Rows r = checked_rows(rows, "shard rows", dim);
    blocks.push_back({r.data, r.dtype, r.count});
  }
  const auto m = metric_from_name(metric);
  const std::int64_t ncand = candidates.shape(1);
  py::gil_scoped_release release;
  fastmarco::refine_topk(q, nq, dim, blocks, c, ncand, k, m, threads, s, i);
}

void hamming_topk_py(const py::array& queries, const py::array& codes, std::int64_t k, const py::array& out_distances,
                     const py::array& out_ids, int threads, const std::string& kernel) {
  const auto* q = checked<std::uint8_t>(queries, "queries", {kAny, kAny});
  const py::ssize_t nq = queries.shape(0), nbytes = queries.shape(1);
  if (nbytes == 0) bad_input("queries must have a positive width in bytes");
  const auto* c = checked<std::uint8_t>(codes, "codes", {kAny, nbytes});
  check_k(k);
  auto* d = checked<std::int32_t>(out_distances, "out_distances", {nq, k}, true);
  auto* i = checked<std::int64_t>(out_ids, "out_ids", {nq, k}, true);
  const auto chosen = fastmarco::hamming_kernel_from_name(kernel);
  py::gil_scoped_release release;
  fastmarco::hamming_topk(q, nq, c, codes.shape(0), nbytes, k, threads, chosen, d, i);
}

// Raises the fastmarco.errors class `name` (the one error hierarchy) with the C++ message.
void raise_fastmarco_error(const char* name, const char* message) {
  const py::object error_class = py::module_::import("fastmarco.errors").attr(name);
  PyErr_SetObject(error_class.ptr(), py::str(message).ptr());
}

py::dtype numpy_dtype(DType dtype) { return py::dtype(dtype == DType::Float16 ? "float16" : "float32"); }

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "fastmarco native core: embedding shard files, exact top-k search and top-k merging.";
  m.attr("FORMAT_VERSION") = fastmarco::kFormatVersion;
  m.attr("HEADER_BYTES") = fastmarco::kHeaderBytes;
  m.attr("MISSING_ID") = fastmarco::kMissingId;

  // C++ exceptions become fastmarco.errors classes; std::out_of_range stays IndexError (pybind11's own).
  py::register_exception_translator([](std::exception_ptr failure) {
    try {
      if (failure) std::rethrow_exception(failure);
    } catch (const fastmarco::ShardChecksumError& e) {
      raise_fastmarco_error("ShardChecksumError", e.what());
    } catch (const fastmarco::ShardFormatError& e) {
      raise_fastmarco_error("ShardFormatError", e.what());
    } catch (const fastmarco::StoreIOError& e) {
      raise_fastmarco_error("StoreIOError", e.what());
    } catch (const std::invalid_argument& e) {
      raise_fastmarco_error("InputError", e.what());
    }
  });

  py::class_<fastmarco::ShardFileWriter>(m, "ShardFileWriter",
                                         "Appends rows to '<path>.tmp' and publishes '<path>' atomically on finalize().")
      .def(py::init([](const std::string& path, const std::string& dtype, std::uint32_t dim) {
             return std::make_unique<fastmarco::ShardFileWriter>(path, fastmarco::dtype_from_name(dtype), dim);
           }),
           "path"_a, "dtype"_a, "dim"_a)
      .def(
          "append",
          [](fastmarco::ShardFileWriter& self, const py::array& rows) {
            const Rows r = checked_rows(rows, "rows", static_cast<py::ssize_t>(self.dim()));
            if (r.dtype != self.dtype()) {
              bad_input(std::string("rows must be ") + (self.dtype() == DType::Float16 ? "float16" : "float32") +
                        " for this " + fastmarco::dtype_name(self.dtype()) + " shard, got " +
                        py::str(rows.dtype()).cast<std::string>());
            }
            py::gil_scoped_release release;
            self.append(r.data, static_cast<std::uint64_t>(r.count));
          },
          "rows"_a, "Appends a C-contiguous (n, dim) array of the writer's dtype and dim (both checked).")
      .def("finalize", &fastmarco::ShardFileWriter::finalize, py::call_guard<py::gil_scoped_release>(),
           "Writes the header, fsyncs and renames into place; returns the payload checksum.")
      .def("abort", &fastmarco::ShardFileWriter::abort, "Removes the temporary file.")
      .def_property_readonly("path", &fastmarco::ShardFileWriter::path)
      .def_property_readonly("dtype",
                             [](const fastmarco::ShardFileWriter& self) { return fastmarco::dtype_name(self.dtype()); })
      .def_property_readonly("dim", &fastmarco::ShardFileWriter::dim)
      .def_property_readonly("rows", &fastmarco::ShardFileWriter::rows)
      .def_property_readonly("is_open", &fastmarco::ShardFileWriter::is_open);

  py::class_<fastmarco::ShardFile>(m, "ShardFile", "A read-only memory map of a finished shard file.")
      .def(py::init<std::string, bool>(), "path"_a, "verify_checksum"_a = false,
           py::call_guard<py::gil_scoped_release>())
      .def("verify_checksum", &fastmarco::ShardFile::verify_checksum, py::call_guard<py::gil_scoped_release>(),
           "Hashes the payload; raises ShardChecksumError on mismatch.")
      .def("check_unchanged", &fastmarco::ShardFile::check_unchanged,
           "Raises ShardFormatError if the file was modified in place or replaced since it was opened.")
      .def_property_readonly("path", &fastmarco::ShardFile::path)
      .def_property_readonly("dtype", [](const fastmarco::ShardFile& self) { return fastmarco::dtype_name(self.dtype()); })
      .def_property_readonly("dim", &fastmarco::ShardFile::dim)
      .def_property_readonly("rows", &fastmarco::ShardFile::rows)
      .def_property_readonly("checksum", &fastmarco::ShardFile::checksum)
      .def_property_readonly("format_version", &fastmarco::ShardFile::format_version)
      .def_property_readonly(
          "vectors",
          [](py::object self_obj) {
            const auto& self = self_obj.cast<const fastmarco::ShardFile&>();
            py::array view(numpy_dtype(self.dtype()),
                           {static_cast<py::ssize_t>(self.rows()), static_cast<py::ssize_t>(self.dim())},
                           self.payload(), self_obj);
            view.attr("setflags")("write"_a = false);
            return view;
          },
          "Zero-copy read-only (rows, dim) numpy view of the payload; keeps the map alive.");

  m.def("exact_search", &exact_search_py, "queries"_a, "rows"_a, "k"_a, "metric"_a, "out_scores"_a, "out_ids"_a,
        "threads"_a = 0,
        "Exact top-k of float32 queries (nq, dim) against float16/float32 rows (n, dim).\n"
        "Fills out_scores (nq, k) float32 and out_ids (nq, k) int64 best-first; ties go to the lower row;\n"
        "missing results are (-inf, -1). threads=0 uses every hardware thread.");
  m.def("merge_topk", &merge_topk_py, "scores"_a, "ids"_a, "id_offsets"_a, "out_scores"_a, "out_ids"_a,
        "Merges (nshard, nq, k) best-first lists into (nq, k); ids are shifted by id_offsets[shard].");
  m.def("refine_topk", &refine_topk_py, "queries"_a, "shards"_a, "candidates"_a, "k"_a, "metric"_a, "out_scores"_a,
        "out_ids"_a, "threads"_a = 0,
        "Exactly re-scores candidate global rows (nq, ncand) against the shards' rows (a list of (n, dim)\n"
        "float16/float32 arrays, concatenated in order) and keeps the k best per query, best-first;\n"
        "ties go to the lower id, missing results are (-inf, -1).");
  m.def("hamming_topk", &hamming_topk_py, "queries"_a, "codes"_a, "k"_a, "out_distances"_a, "out_ids"_a,
        "threads"_a = 0, "kernel"_a = "auto",
        "Exhaustive Hamming top-k of packed uint8 query codes (nq, nbytes) against codes (n, nbytes).\n"
        "Fills out_distances (nq, k) int32 and out_ids (nq, k) int64 nearest first; ties go to the lower row;\n"
        "missing results are (-1, -1). kernel: auto or one of hamming_kernels().");
  m.def(
      "hamming_kernels",
      [] { return names_of(fastmarco::hamming_kernels(), fastmarco::hamming_kernel_name); },
      "The Hamming kernels this CPU runs, fastest first.");
  m.def(
      "hamming_auto_kernel",
      [] { return fastmarco::hamming_kernel_name(fastmarco::auto_kernel(fastmarco::simd_active())); },
      "The kernel 'auto' runs: the fastest within the active SIMD variant (simd_variant()).");
  m.def(
      "checksum",
      [](const py::buffer& data) {
        const py::buffer_info info = data.request();
        if (info.size * info.itemsize > 0 && !PyBuffer_IsContiguous(info.view(), 'C')) {
          bad_input("checksum needs a contiguous buffer");
        }
        const void* ptr = info.ptr;
        const auto bytes = static_cast<std::size_t>(info.size * info.itemsize);
        py::gil_scoped_release release;
        return fastmarco::checksum_bytes(ptr, bytes);
      },
      "data"_a, "XXH3-64 of a contiguous buffer: the checksum the shard format uses.");
  m.def(
      "simd_variant", [] { return fastmarco::simd_name(fastmarco::simd_active()); },
      "The SIMD variant the kernels run: FASTMARCO_SIMD where set, else the widest this CPU runs.");
  m.def(
      "simd_variants",
      [] { return names_of(fastmarco::simd_supported(), fastmarco::simd_name); },
      "The SIMD variants this build holds and this CPU runs, widest first.");
  m.def(
      "simd_compiled",
      [] { return names_of(fastmarco::simd_compiled(), fastmarco::simd_name); },
      "Every SIMD variant this build holds, widest first.");
  m.def(
      "set_simd_variant",
      [](const std::string& name) { fastmarco::set_simd_active(fastmarco::simd_from_name(name)); }, "name"_a,
      "Runs the kernels with this variant from now on (tests, bug reports); one this CPU cannot run is an error.");
  m.attr("BUILD_MARCH") = FASTMARCO_BUILD_MARCH;
}
