// .npy float32 reader/writer; format reference: numpy/lib/format.py ("NEP 1").
#include "npy.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

namespace npy {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;
constexpr std::size_t kMaxHeaderLen = 1 << 20;  // real headers are < 200 bytes; refuse absurd ones
constexpr std::size_t kMaxDims = 32;            // NumPy's own limit (NPY_MAXDIMS) before 2.0

bool host_is_little_endian() {
  const uint16_t probe = 1;
  unsigned char first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) { throw Error(path + ": " + what); }

/// Position just after `'key':` (single or double quotes) in the header dict, or npos.
std::size_t find_key(const std::string& header, const std::string& key) {
  for (const char quote : {'\'', '"'}) {
    const std::string token = std::string(1, quote) + key + std::string(1, quote);
    std::size_t pos = header.find(token);
    if (pos == std::string::npos) continue;
    pos += token.size();
    while (pos < header.size() && std::isspace(static_cast<unsigned char>(header[pos]))) ++pos;
    if (pos >= header.size() || header[pos] != ':') return std::string::npos;
    ++pos;
    while (pos < header.size() && std::isspace(static_cast<unsigned char>(header[pos]))) ++pos;
    return pos;
  }
  return std::string::npos;
}

std::string parse_descr(const std::string& path, const std::string& header) {
  const std::size_t pos = find_key(header, "descr");
  if (pos == std::string::npos || pos >= header.size() || (header[pos] != '\'' && header[pos] != '"')) {
    fail(path, "header has no 'descr' string: " + header);
  }
  const std::size_t end = header.find(header[pos], pos + 1);
  if (end == std::string::npos) fail(path, "unterminated 'descr' in header: " + header);
  return header.substr(pos + 1, end - pos - 1);
}

bool parse_fortran_order(const std::string& path, const std::string& header) {
  const std::size_t pos = find_key(header, "fortran_order");
  if (pos == std::string::npos) fail(path, "header has no 'fortran_order': " + header);
  if (header.compare(pos, 5, "False") == 0) return false;
  if (header.compare(pos, 4, "True") == 0) return true;
  fail(path, "'fortran_order' is neither True nor False: " + header);
}

std::vector<int64_t> parse_shape(const std::string& path, const std::string& header) {
  std::size_t pos = find_key(header, "shape");
  if (pos == std::string::npos || pos >= header.size() || header[pos] != '(') {
    fail(path, "header has no 'shape' tuple: " + header);
  }
  const std::size_t end = header.find(')', pos);
  if (end == std::string::npos) fail(path, "unterminated 'shape' tuple in header: " + header);
  std::vector<int64_t> shape;
  std::string item;
  std::istringstream items(header.substr(pos + 1, end - pos - 1));
  while (std::getline(items, item, ',')) {
    item.erase(std::remove_if(item.begin(), item.end(), [](unsigned char c) { return std::isspace(c) != 0; }),
               item.end());
    if (!item.empty() && item.back() == 'L') item.pop_back();  // Python 2 longs in old files
    if (item.empty()) continue;                                 // "(10,)" and "()"
    if (!std::all_of(item.begin(), item.end(), [](unsigned char c) { return std::isdigit(c) != 0; }) ||
        item.size() > 18) {
      fail(path, "bad dimension '" + item + "' in shape: " + header);
    }
    shape.push_back(std::stoll(item));
    if (shape.size() > kMaxDims) fail(path, "more than " + std::to_string(kMaxDims) + " dimensions");
  }
  return shape;
}

void byteswap32(float* data, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    unsigned char bytes[4];
    std::memcpy(bytes, &data[i], 4);
    std::swap(bytes[0], bytes[3]);
    std::swap(bytes[1], bytes[2]);
    std::memcpy(&data[i], bytes, 4);
  }
}

}  // namespace

std::size_t element_count(const std::vector<int64_t>& shape) {
  std::size_t count = 1;
  for (const int64_t dim : shape) {
    if (dim < 0) throw Error("negative dimension in shape " + shape_to_string(shape));
    const auto udim = static_cast<std::size_t>(dim);
    if (udim != 0 && count > std::numeric_limits<std::size_t>::max() / sizeof(float) / udim) {
      throw Error("shape " + shape_to_string(shape) + " is too large");
    }
    count *= udim;
  }
  return count;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(shape[i]);
  }
  if (shape.size() == 1) text += ",";
  return text + ")";
}

Array load_float32(const std::string& path) {
  std::error_code status_error;
  const auto status = std::filesystem::status(path, status_error);
  if (!std::filesystem::exists(status)) fail(path, "no such file");
  if (!std::filesystem::is_regular_file(status)) fail(path, "not a regular file");
  std::ifstream file(path, std::ios::binary);
  if (!file) fail(path, std::string("cannot open file: ") + std::strerror(errno));
  file.seekg(0, std::ios::end);
  const auto file_size = static_cast<std::size_t>(file.tellg());
  file.seekg(0, std::ios::beg);

  char preamble[kMagicLen + 2] = {};
  if (!file.read(preamble, sizeof preamble) || std::memcmp(preamble, kMagic, kMagicLen) != 0) {
    fail(path, "not a .npy file (missing the \\x93NUMPY magic string); save arrays with numpy.save()");
  }
  const auto major = static_cast<unsigned char>(preamble[kMagicLen]);
  std::size_t header_len = 0;
  std::size_t prefix = kMagicLen + 2;
  if (major == 1) {
    unsigned char len[2];
    if (!file.read(reinterpret_cast<char*>(len), 2)) fail(path, "truncated header length");
    header_len = len[0] | (static_cast<std::size_t>(len[1]) << 8);
    prefix += 2;
  } else if (major == 2 || major == 3) {
    unsigned char len[4];
    if (!file.read(reinterpret_cast<char*>(len), 4)) fail(path, "truncated header length");
    header_len = len[0] | (static_cast<std::size_t>(len[1]) << 8) | (static_cast<std::size_t>(len[2]) << 16) |
                 (static_cast<std::size_t>(len[3]) << 24);
    prefix += 4;
  } else {
    fail(path, "unsupported .npy format version " + std::to_string(major));
  }
  if (header_len > kMaxHeaderLen || prefix + header_len > file_size) {
    fail(path, "header length " + std::to_string(header_len) + " does not fit in a " + std::to_string(file_size) +
                   "-byte file");
  }
  std::string header(header_len, '\0');
  if (!file.read(header.data(), static_cast<std::streamsize>(header_len))) fail(path, "truncated header");
  while (!header.empty() && std::isspace(static_cast<unsigned char>(header.back()))) header.pop_back();

  const std::string descr = parse_descr(path, header);
  bool swap = false;
  if (descr == "<f4") {
    swap = !host_is_little_endian();
  } else if (descr == ">f4") {
    swap = host_is_little_endian();
  } else {
    fail(path, "dtype '" + descr + "' is not float32 ('<f4'); convert with array.astype(numpy.float32)");
  }
  if (parse_fortran_order(path, header)) {
    fail(path, "array is in Fortran order; save numpy.ascontiguousarray(array) instead");
  }

  Array array;
  array.shape = parse_shape(path, header);
  std::size_t count = 0;
  try {
    count = element_count(array.shape);
  } catch (const Error& error) {
    fail(path, error.what());
  }
  const std::size_t data_bytes = file_size - prefix - header_len;
  if (data_bytes != count * sizeof(float)) {
    fail(path, "shape " + shape_to_string(array.shape) + " needs " + std::to_string(count * sizeof(float)) +
                   " bytes of data but the file holds " + std::to_string(data_bytes) + " (truncated or corrupt file)");
  }
  array.data.resize(count);
  if (count && !file.read(reinterpret_cast<char*>(array.data.data()), static_cast<std::streamsize>(data_bytes))) {
    fail(path, "read error in the data section");
  }
  if (swap) byteswap32(array.data.data(), count);
  return array;
}

void save_float32(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  const std::size_t count = element_count(shape);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_to_string(shape) + ", }";
  // magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64 (what numpy writes).
  const std::size_t unpadded = kMagicLen + 2 + 2 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  if (header.size() > 0xFFFF) throw Error(path + ": shape too long for a version 1.0 header");

  std::vector<float> buffer(data, data + count);
  if (!host_is_little_endian()) byteswap32(buffer.data(), count);

  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) throw Error(path + ": cannot create file: " + std::strerror(errno));
  const unsigned char version_and_len[4] = {1, 0, static_cast<unsigned char>(header.size() & 0xFF),
                                            static_cast<unsigned char>(header.size() >> 8)};
  file.write(kMagic, kMagicLen);
  file.write(reinterpret_cast<const char*>(version_and_len), 4);
  file.write(header.data(), static_cast<std::streamsize>(header.size()));
  file.write(reinterpret_cast<const char*>(buffer.data()), static_cast<std::streamsize>(count * sizeof(float)));
  file.close();
  if (!file) throw Error(path + ": write failed: " + std::strerror(errno));
}

}  // namespace npy
