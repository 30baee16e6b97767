// Embedding shard file: a 64-byte header followed by a row-major payload.
//
// Layout (little-endian):
//   0  char[8]  magic "FMSHARD\0"
//   8  u32      format version (kFormatVersion)
//  12  u32      dtype code (1 = float32, 2 = float16)
//  16  u32      dim
//  20  u32      reserved (0)
//  24  u64      rows
//  32  u64      XXH3-64 of the payload
//  40  u64      XXH3-64 of bytes [0, 40)
//  48  u8[16]   reserved (0; a reader refuses anything else, since no checksum covers these bytes)
//  64  payload  rows * dim * itemsize bytes
//
// A writer appends to "<path>.tmp" (whose header stays zeroed, so it never looks whole),
// then writes the header, fsyncs, renames to <path> and fsyncs the directory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastmarco {

constexpr std::uint32_t kFormatVersion = 1;
constexpr std::size_t kHeaderBytes = 64;
constexpr char kMagic[8] = {'F', 'M', 'S', 'H', 'A', 'R', 'D', '\0'};

enum class DType : std::uint32_t { Float32 = 1, Float16 = 2 };

std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
DType dtype_from_name(const std::string& name);

// Structural problem with a shard file (bad magic, version, size, header).
class ShardFormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The payload does not hash to the checksum stored in the header.
class ShardChecksumError : public ShardFormatError {
 public:
  using ShardFormatError::ShardFormatError;
};

// A shard file cannot be opened, read, mapped or written (the message carries strerror).
class StoreIOError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// XXH3-64 of a byte range; the checksum used throughout the format.
std::uint64_t checksum_bytes(const void* data, std::size_t size);

class ShardFileWriter {
 public:
  ShardFileWriter(std::string path, DType dtype, std::uint32_t dim);
  ~ShardFileWriter();
  ShardFileWriter(const ShardFileWriter&) = delete;
  ShardFileWriter& operator=(const ShardFileWriter&) = delete;

  // Appends `rows` rows of `dim` values of the writer's dtype.
  void append(const void* data, std::uint64_t rows);
  // Writes the header, fsyncs and atomically publishes the file; returns the payload checksum.
  std::uint64_t finalize();
  // Removes the temporary file; the final path is never created.
  void abort();

  const std::string& path() const { return path_; }
  DType dtype() const { return dtype_; }
  std::uint32_t dim() const { return dim_; }
  std::uint64_t rows() const { return rows_; }
  bool is_open() const { return fd_ >= 0; }

 private:
  std::string path_;
  std::string tmp_path_;
  DType dtype_;
  std::uint32_t dim_;
  std::uint64_t rows_ = 0;
  int fd_ = -1;
  void* hash_state_ = nullptr;  // XXH3_state_t*, opaque here to keep xxhash.h out of headers
};

// A read-only memory map of a finished shard file. Shard files are immutable once published
// (writers rename new files into place); the map keeps the file open so that an in-place edit
// by someone else (which would make reads past a new end of file raise SIGBUS) can be noticed.
class ShardFile {
 public:
  // Validates magic, version, header checksum and file size; with verify_checksum also
  // hashes the payload. Throws ShardFormatError / ShardChecksumError naming the file.
  ShardFile(std::string path, bool verify_checksum);
  ~ShardFile();
  ShardFile(const ShardFile&) = delete;
  ShardFile& operator=(const ShardFile&) = delete;

  // Hashes the payload and throws ShardChecksumError on mismatch.
  void verify_checksum() const;
  // Throws ShardFormatError if the file was changed in place (size or modification time of the open
  // file) or replaced (the path names another file) since it was opened. Two stat calls.
  void check_unchanged() const;

  const std::string& path() const { return path_; }
  DType dtype() const { return dtype_; }
  std::uint32_t dim() const { return dim_; }
  std::uint64_t rows() const { return rows_; }
  std::uint64_t checksum() const { return checksum_; }
  std::uint32_t format_version() const { return version_; }
  const void* payload() const;

 private:
  std::string path_;
  DType dtype_ = DType::Float32;
  std::uint32_t dim_ = 0;
  std::uint32_t version_ = 0;
  std::uint64_t rows_ = 0;
  std::uint64_t checksum_ = 0;
  std::size_t payload_bytes_ = 0;
  void* map_ = nullptr;
  std::size_t map_bytes_ = 0;
  int fd_ = -1;
  // identity of the file as opened: device, inode, size, modification time (ns)
  std::uint64_t device_ = 0, inode_ = 0, size_ = 0;
  std::int64_t mtime_ns_ = 0;
};

}  // namespace fastmarco
