// The only file that knows about Python: argument checks, GIL release, zero-copy views.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "exact_search.hpp"
#include "refine.hpp"
#include "shard_file.hpp"
#include "topk.hpp"

namespace py = pybind11;
using namespace pybind11::literals;
using fastmarco::DType;

namespace {

DType dtype_of(const py::array& a, const char* name) {
  const auto dt = a.dtype();
  if (dt.kind() == 'f' && dt.itemsize() == 4) return DType::Float32;
  if (dt.kind() == 'f' && dt.itemsize() == 2) return DType::Float16;
  throw py::value_error(std::string(name) + " must be float32 or float16, got " + py::str(dt).cast<std::string>() +
                        "; convert with .astype(numpy.float32)");
}

void require_c_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + " must be C-contiguous; pass numpy.ascontiguousarray(" + name + ")");
  }
}

void require_shape(const py::array& a, const char* name, std::initializer_list<py::ssize_t> shape) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  std::string want = "(";
  py::ssize_t i = 0;
  for (auto s : shape) {
    if (ok && a.shape(i) != s) ok = false;
    want += (i ? ", " : "") + std::to_string(s);
    ++i;
  }
  want += shape.size() == 1 ? ",)" : ")";
  if (!ok) {
    throw py::value_error(std::string(name) + " must have shape " + want + ", got " +
                          py::str(py::tuple(py::cast(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()))))
                              .cast<std::string>());
  }
}

template <typename T>
void require_dtype(const py::array& a, const char* name, const char* dtype_name) {
  if (!py::isinstance<py::array_t<T>>(a) || !a.dtype().is(py::dtype::of<T>())) {
    throw py::value_error(std::string(name) + " must have dtype " + dtype_name + ", got " +
                          py::str(a.dtype()).cast<std::string>());
  }
}

fastmarco::Metric metric_from_name(const std::string& name) {
  if (name == "ip" || name == "dot") return fastmarco::Metric::InnerProduct;
  if (name == "cosine") return fastmarco::Metric::Cosine;
  throw py::value_error("metric must be 'ip' (inner product) or 'cosine', got '" + name + "'");
}

void exact_search_py(const py::array& queries, const py::array& rows, std::int64_t k, const std::string& metric,
                     const py::array& out_scores, const py::array& out_ids, int threads) {
  require_dtype<float>(queries, "queries", "float32");
  require_c_contiguous(queries, "queries");
  if (queries.ndim() != 2) throw py::value_error("queries must be 2-D (nq, dim)");
  const DType dtype = dtype_of(rows, "rows");
  require_c_contiguous(rows, "rows");
  if (rows.ndim() != 2) throw py::value_error("rows must be 2-D (nrows, dim)");
  if (rows.shape(1) != queries.shape(1)) {
    throw py::value_error("queries have dim " + std::to_string(queries.shape(1)) + " but rows have dim " +
                          std::to_string(rows.shape(1)));
  }
  if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
  const py::ssize_t nq = queries.shape(0);
  require_dtype<float>(out_scores, "out_scores", "float32");
  require_dtype<std::int64_t>(out_ids, "out_ids", "int64");
  require_shape(out_scores, "out_scores", {nq, k});
  require_shape(out_ids, "out_ids", {nq, k});
  require_c_contiguous(out_scores, "out_scores");
  require_c_contiguous(out_ids, "out_ids");
  if (!out_scores.writeable() || !out_ids.writeable()) throw py::value_error("out_scores and out_ids must be writeable");
  if (rows.shape(1) == 0) throw py::value_error("dim must be positive");

  const auto* q = static_cast<const float*>(queries.data());
  const void* r = rows.data();
  auto* s = static_cast<float*>(const_cast<void*>(out_scores.data()));
  auto* i = static_cast<std::int64_t*>(const_cast<void*>(out_ids.data()));
  const fastmarco::SearchOptions options{metric_from_name(metric), threads};
  const std::int64_t dim = queries.shape(1);
  const std::int64_t nrows = rows.shape(0);
  py::gil_scoped_release release;
  fastmarco::exact_search(q, nq, dim, r, dtype, nrows, k, options, s, i);
}

void merge_topk_py(const py::array& scores, const py::array& ids, const py::array& id_offsets,
                   const py::array& out_scores, const py::array& out_ids) {
  require_dtype<float>(scores, "scores", "float32");
  require_dtype<std::int64_t>(ids, "ids", "int64");
  require_dtype<std::int64_t>(id_offsets, "id_offsets", "int64");
  require_dtype<float>(out_scores, "out_scores", "float32");
  require_dtype<std::int64_t>(out_ids, "out_ids", "int64");
  if (scores.ndim() != 3) throw py::value_error("scores must be 3-D (nshard, nq, k)");
  const py::ssize_t nshard = scores.shape(0), nq = scores.shape(1), k = scores.shape(2);
  require_shape(ids, "ids", {nshard, nq, k});
  require_shape(id_offsets, "id_offsets", {nshard});
  require_shape(out_scores, "out_scores", {nq, k});
  require_shape(out_ids, "out_ids", {nq, k});
  for (const auto* a : {&scores, &ids, &id_offsets, &out_scores, &out_ids}) require_c_contiguous(*a, "merge_topk arrays");
  if (!out_scores.writeable() || !out_ids.writeable()) throw py::value_error("out_scores and out_ids must be writeable");
  const auto* s = static_cast<const float*>(scores.data());
  const auto* i = static_cast<const std::int64_t*>(ids.data());
  const auto* o = static_cast<const std::int64_t*>(id_offsets.data());
  auto* os = static_cast<float*>(const_cast<void*>(out_scores.data()));
  auto* oi = static_cast<std::int64_t*>(const_cast<void*>(out_ids.data()));
  py::gil_scoped_release release;
  fastmarco::merge_topk(s, i, o, nshard, nq, k, os, oi);
}

void refine_topk_py(const py::array& queries, const std::vector<py::array>& shards, const py::array& candidates, std::int64_t k,
                    const std::string& metric, const py::array& out_scores, const py::array& out_ids, int threads) {
  require_dtype<float>(queries, "queries", "float32");
  require_c_contiguous(queries, "queries");
  if (queries.ndim() != 2) throw py::value_error("queries must be 2-D (nq, dim)");
  const py::ssize_t nq = queries.shape(0), dim = queries.shape(1);
  require_dtype<std::int64_t>(candidates, "candidates", "int64");
  require_c_contiguous(candidates, "candidates");
  if (candidates.ndim() != 2 || candidates.shape(0) != nq) throw py::value_error("candidates must be (nq, ncand)");
  if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
  require_dtype<float>(out_scores, "out_scores", "float32");
  require_dtype<std::int64_t>(out_ids, "out_ids", "int64");
  require_shape(out_scores, "out_scores", {nq, k});
  require_shape(out_ids, "out_ids", {nq, k});
  if (!out_scores.writeable() || !out_ids.writeable()) throw py::value_error("out_scores and out_ids must be writeable");
  std::vector<fastmarco::RowBlock> blocks;
  for (const auto& rows : shards) {
    const DType dtype = dtype_of(rows, "shard rows");
    require_c_contiguous(rows, "shard rows");
    if (rows.ndim() != 2 || rows.shape(1) != dim) {
      throw py::value_error("every shard must be (rows, " + std::to_string(dim) + ")");
    }
    blocks.push_back({rows.data(), dtype, rows.shape(0)});
  }
  const auto* q = static_cast<const float*>(queries.data());
  const auto* c = static_cast<const std::int64_t*>(candidates.data());
  auto* s = static_cast<float*>(const_cast<void*>(out_scores.data()));
  auto* i = static_cast<std::int64_t*>(const_cast<void*>(out_ids.data()));
  const auto m = metric_from_name(metric);
  const std::int64_t ncand = candidates.shape(1);
  py::gil_scoped_release release;
  try {
    fastmarco::refine_topk(q, nq, dim, blocks, c, ncand, k, m, threads, s, i);
  } catch (const std::out_of_range& e) {
    py::gil_scoped_acquire acquire;
    throw py::index_error(e.what());
  }
}

py::dtype numpy_dtype(DType dtype) { return py::dtype(dtype == DType::Float16 ? "float16" : "float32"); }

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "fastmarco native core: embedding shard files, exact top-k search and top-k merging.";
  m.attr("FORMAT_VERSION") = fastmarco::kFormatVersion;
  m.attr("HEADER_BYTES") = fastmarco::kHeaderBytes;
  m.attr("MISSING_ID") = fastmarco::kMissingId;

  auto format_error = py::register_exception<fastmarco::ShardFormatError>(m, "ShardFormatError", PyExc_ValueError);
  py::register_exception<fastmarco::ShardChecksumError>(m, "ShardChecksumError", format_error.ptr());

  py::class_<fastmarco::ShardFileWriter>(m, "ShardFileWriter",
                                         "Appends rows to '<path>.tmp' and publishes '<path>' atomically on finalize().")
      .def(py::init([](const std::string& path, const std::string& dtype, std::uint32_t dim) {
             return std::make_unique<fastmarco::ShardFileWriter>(path, fastmarco::dtype_from_name(dtype), dim);
           }),
           "path"_a, "dtype"_a, "dim"_a)
      .def(
          "append",
          [](fastmarco::ShardFileWriter& self, const py::array& rows) {
            require_c_contiguous(rows, "rows");
            if (rows.ndim() != 2) throw py::value_error("rows must be 2-D (n, dim)");
            const void* data = rows.data();
            const auto n = static_cast<std::uint64_t>(rows.shape(0));
            // Shape and dtype are checked by the Python layer, which knows the shard's dim and dtype.
            py::gil_scoped_release release;
            self.append(data, n);
          },
          "rows"_a, "Appends a C-contiguous (n, dim) array of the writer's dtype.")
      .def("finalize", &fastmarco::ShardFileWriter::finalize, py::call_guard<py::gil_scoped_release>(),
           "Writes the header, fsyncs and renames into place; returns the payload checksum.")
      .def("abort", &fastmarco::ShardFileWriter::abort, "Removes the temporary file.")
      .def_property_readonly("path", &fastmarco::ShardFileWriter::path)
      .def_property_readonly("rows", &fastmarco::ShardFileWriter::rows)
      .def_property_readonly("is_open", &fastmarco::ShardFileWriter::is_open);

  py::class_<fastmarco::ShardFile>(m, "ShardFile", "A read-only memory map of a finished shard file.")
      .def(py::init<std::string, bool>(), "path"_a, "verify_checksum"_a = false,
           py::call_guard<py::gil_scoped_release>())
      .def("verify_checksum", &fastmarco::ShardFile::verify_checksum, py::call_guard<py::gil_scoped_release>(),
           "Hashes the payload; raises ShardChecksumError on mismatch.")
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
  m.def(
      "checksum",
      [](const py::buffer& data) {
        const py::buffer_info info = data.request();
        if (info.size * info.itemsize > 0 && !PyBuffer_IsContiguous(info.view(), 'C')) {
          throw py::value_error("checksum needs a contiguous buffer");
        }
        const void* ptr = info.ptr;
        const auto bytes = static_cast<std::size_t>(info.size * info.itemsize);
        py::gil_scoped_release release;
        return fastmarco::checksum_bytes(ptr, bytes);
      },
      "data"_a, "XXH3-64 of a contiguous buffer: the checksum the shard format uses.");
  m.def("simd_fp16_enabled", &fastmarco::simd_fp16_enabled,
        "Whether fp16 rows are converted with F16C/AVX instructions in this build.");
}
