#include "shard_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>

#define XXH_INLINE_ALL
#include "third_party/xxhash/xxhash.h"

namespace fastmarco {
namespace {

static_assert(sizeof(void*) == 8, "fastmarco needs a 64-bit platform");

bool host_is_little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

[[noreturn]] void fail_io(const std::string& what, const std::string& path) {
  throw StoreIOError(what + " '" + path + "': " + std::strerror(errno));
}

std::string hex64(std::uint64_t v) {
  char text[17];
  std::snprintf(text, sizeof text, "%016" PRIx64, v);
  return text;
}

std::int64_t mtime_ns(const struct stat& st) {
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

void put_u32(unsigned char* at, std::uint32_t v) { std::memcpy(at, &v, 4); }
void put_u64(unsigned char* at, std::uint64_t v) { std::memcpy(at, &v, 8); }
std::uint32_t get_u32(const unsigned char* at) {
  std::uint32_t v;
  std::memcpy(&v, at, 4);
  return v;
}
std::uint64_t get_u64(const unsigned char* at) {
  std::uint64_t v;
  std::memcpy(&v, at, 8);
  return v;
}

void write_all(int fd, const void* data, std::size_t size, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_io("cannot write", path);
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void fsync_parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd < 0) fail_io("cannot open directory", dir);
  const int rc = ::fsync(dfd);
  const int saved = errno;
  ::close(dfd);
  errno = saved;
  if (rc != 0) fail_io("cannot fsync directory", dir);
}

}  // namespace

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::Float32: return 4;
    case DType::Float16: return 2;
  }
  throw std::invalid_argument("unknown dtype code");
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "fp32";
    case DType::Float16: return "fp16";
  }
  throw std::invalid_argument("unknown dtype code");
}

DType dtype_from_name(const std::string& name) {
  if (name == "fp32" || name == "float32") return DType::Float32;
  if (name == "fp16" || name == "float16") return DType::Float16;
  throw std::invalid_argument("dtype must be 'fp16' or 'fp32', got '" + name + "'");
}

std::uint64_t checksum_bytes(const void* data, std::size_t size) { return XXH3_64bits(data, size); }

ShardFileWriter::ShardFileWriter(std::string path, DType dtype, std::uint32_t dim)
    : path_(std::move(path)), tmp_path_(path_ + ".tmp"), dtype_(dtype), dim_(dim) {
  if (!host_is_little_endian()) throw std::runtime_error("fastmarco shards need a little-endian host");
  if (dim == 0) throw std::invalid_argument("dim must be positive");
  dtype_size(dtype);  // validates the code
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_io("cannot create", tmp_path_);
  auto* state = XXH3_createState();
  if (state == nullptr) throw std::bad_alloc();
  XXH3_64bits_reset(state);
  hash_state_ = state;
  const unsigned char zeros[kHeaderBytes] = {};
  write_all(fd_, zeros, kHeaderBytes, tmp_path_);
}

ShardFileWriter::~ShardFileWriter() {
  if (fd_ >= 0) {
    try {
      abort();
    } catch (...) {
    }
  }
  XXH3_freeState(static_cast<XXH3_state_t*>(hash_state_));
}

void ShardFileWriter::append(const void* data, std::uint64_t rows) {
  if (fd_ < 0) throw std::runtime_error("shard writer for '" + path_ + "' is closed");
  const std::size_t bytes = rows * dim_ * dtype_size(dtype_);
  write_all(fd_, data, bytes, tmp_path_);
  XXH3_64bits_update(static_cast<XXH3_state_t*>(hash_state_), data, bytes);
  rows_ += rows;
}

std::uint64_t ShardFileWriter::finalize() {
  if (fd_ < 0) throw std::runtime_error("shard writer for '" + path_ + "' is closed");
  const std::uint64_t payload_hash = XXH3_64bits_digest(static_cast<XXH3_state_t*>(hash_state_));
  unsigned char header[kHeaderBytes] = {};
  std::memcpy(header, kMagic, 8);
  put_u32(header + 8, kFormatVersion);
  put_u32(header + 12, static_cast<std::uint32_t>(dtype_));
  put_u32(header + 16, dim_);
  put_u32(header + 20, 0);
  put_u64(header + 24, rows_);
  put_u64(header + 32, payload_hash);
  put_u64(header + 40, XXH3_64bits(header, 40));
  if (::pwrite(fd_, header, kHeaderBytes, 0) != static_cast<ssize_t>(kHeaderBytes)) {
    fail_io("cannot write header of", tmp_path_);
  }
  if (::fsync(fd_) != 0) fail_io("cannot fsync", tmp_path_);
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    fail_io("cannot rename to", path_);
  }
  fsync_parent_dir(path_);
  return payload_hash;
}

void ShardFileWriter::abort() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(tmp_path_.c_str());
  }
}

ShardFile::ShardFile(std::string path, bool verify) : path_(std::move(path)) {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_io("cannot open shard", path_);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int saved = errno;
    ::close(fd);
    errno = saved;
    fail_io("cannot stat shard", path_);
  }
  device_ = static_cast<std::uint64_t>(st.st_dev);
  inode_ = static_cast<std::uint64_t>(st.st_ino);
  size_ = static_cast<std::uint64_t>(st.st_size);
  mtime_ns_ = mtime_ns(st);
  const auto file_bytes = static_cast<std::uint64_t>(st.st_size);
  unsigned char header[kHeaderBytes] = {};
  const ssize_t got = file_bytes >= kHeaderBytes ? ::pread(fd, header, kHeaderBytes, 0) : 0;
  if (got != static_cast<ssize_t>(kHeaderBytes)) {
    ::close(fd);
    throw ShardFormatError("shard '" + path_ + "' is truncated: " + std::to_string(file_bytes) +
                           " bytes is shorter than the " + std::to_string(kHeaderBytes) + "-byte header");
  }
  auto fail = [&](const std::string& why) {
    ::close(fd);
    throw ShardFormatError("shard '" + path_ + "' " + why);
  };
  if (std::memcmp(header, kMagic, 8) != 0) fail("is not a fastmarco shard (bad magic bytes)");
  version_ = get_u32(header + 8);
  if (version_ != kFormatVersion) {
    fail("has format version " + std::to_string(version_) + "; this build of fastmarco reads version " +
         std::to_string(kFormatVersion));
  }
  if (get_u64(header + 40) != XXH3_64bits(header, 40)) fail("has a corrupt header (header checksum mismatch)");
  for (std::size_t i = 48; i < kHeaderBytes; ++i) {
    if (header[i] != 0) fail("has a corrupt header (reserved byte " + std::to_string(i) + " is not zero)");
  }
  const std::uint32_t code = get_u32(header + 12);
  if (code != static_cast<std::uint32_t>(DType::Float32) && code != static_cast<std::uint32_t>(DType::Float16)) {
    fail("has unknown dtype code " + std::to_string(code));
  }
  dtype_ = static_cast<DType>(code);
  dim_ = get_u32(header + 16);
  rows_ = get_u64(header + 24);
  checksum_ = get_u64(header + 32);
  if (dim_ == 0) fail("has dim 0");
  const std::uint64_t row_bytes = std::uint64_t{dim_} * dtype_size(dtype_);
  if (rows_ > (std::numeric_limits<std::uint64_t>::max() - kHeaderBytes) / row_bytes) fail("has an impossible row count");
  payload_bytes_ = rows_ * row_bytes;
  const std::uint64_t expected = kHeaderBytes + payload_bytes_;
  if (file_bytes != expected) {
    fail(std::string(file_bytes < expected ? "is truncated" : "has trailing bytes") + ": header says " +
         std::to_string(rows_) + " rows x " + std::to_string(dim_) + " " + dtype_name(dtype_) + " = " +
         std::to_string(expected) + " bytes, file has " + std::to_string(file_bytes));
  }
  map_bytes_ = expected;
  void* map = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    const int saved = errno;
    ::close(fd);
    errno = saved;
    fail_io("cannot memory-map shard", path_);
  }
  map_ = map;
  fd_ = fd;
  if (verify) {
    try {
      verify_checksum();
    } catch (...) {
      ::munmap(map_, map_bytes_);
      ::close(fd_);
      throw;
    }
  }
}

ShardFile::~ShardFile() {
  ::munmap(map_, map_bytes_);
  ::close(fd_);
}

void ShardFile::check_unchanged() const {
  struct stat open_file {}, named {};
  if (::fstat(fd_, &open_file) != 0) fail_io("cannot stat shard", path_);
  const bool edited = static_cast<std::uint64_t>(open_file.st_size) != size_ || mtime_ns(open_file) != mtime_ns_;
  const bool replaced = ::stat(path_.c_str(), &named) != 0 || static_cast<std::uint64_t>(named.st_dev) != device_ ||
                        static_cast<std::uint64_t>(named.st_ino) != inode_;
  if (edited || replaced) {
    throw ShardFormatError("shard '" + path_ + "' " +
                           (edited ? "was modified in place" : "was replaced or removed") +
                           " since it was opened; shard files are immutable once written: reopen the shard set "
                           "(or restart the engine) to read the new files");
  }
}

const void* ShardFile::payload() const { return static_cast<const char*>(map_) + kHeaderBytes; }

void ShardFile::verify_checksum() const {
  const std::uint64_t actual = XXH3_64bits(payload(), payload_bytes_);
  if (actual != checksum_) {
    throw ShardChecksumError("shard '" + path_ + "' payload checksum mismatch: header says " + hex64(checksum_) +
                             ", payload hashes to " + hex64(actual) + " (the file is corrupt)");
  }
}

}  // namespace fastmarco
