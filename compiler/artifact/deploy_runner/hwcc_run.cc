// hwcc_run: run an hwcc bundle (module.so + io.txt + lib/) without Python.
//
//   ./hwcc_run [--inputs DIR] [--outputs DIR] [--repeat N] [--threads N]
//
// Reads every model input from DIR/<file>.npy, checks its dtype and shape against io.txt,
// runs the Relax VM's "main" once and writes every output to DIR/<file>.npy. With --repeat N
// it then times N more runs and prints one latency line. Any failure prints one line
// "hwcc_run: error: ..." on stderr and exits with status 1 (2 for a bad command line).
//
// io.txt, written by compiler/artifact/deploy.py, has one tab-separated line per tensor:
//   input|output <TAB> name <TAB> file stem <TAB> dtype <TAB> d0,d1,... (empty for a scalar)
// cpu.txt names the target and the CPU features (LLVM -mattr names) module.so was built for:
//   target <TAB> x86_64-linux-gnu -mattr=+avx2,+fma
//   feature <TAB> avx2
// They are checked first: on a CPU lacking one, the runner prints one line and exits with 1
// instead of dying with SIGILL inside module.so.

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <sys/stat.h>
#include <unistd.h>
#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- dtypes -----------------------------------------------------------------------------
struct DType {
  const char* name;   // numpy name, as in the manifest
  const char* descr;  // .npy descr (little-endian)
  DLDataType dl;
};

const DType kDTypes[] = {
    {"float32", "<f4", {kDLFloat, 32, 1}}, {"float64", "<f8", {kDLFloat, 64, 1}},
    {"float16", "<f2", {kDLFloat, 16, 1}}, {"int64", "<i8", {kDLInt, 64, 1}},
    {"int32", "<i4", {kDLInt, 32, 1}},     {"int16", "<i2", {kDLInt, 16, 1}},
    {"int8", "|i1", {kDLInt, 8, 1}},       {"uint8", "|u1", {kDLUInt, 8, 1}},
    {"uint16", "<u2", {kDLUInt, 16, 1}},   {"uint32", "<u4", {kDLUInt, 32, 1}},
    {"uint64", "<u8", {kDLUInt, 64, 1}},   {"bool", "|b1", {kDLBool, 8, 1}},
};

const DType* dtype_by_name(const std::string& name) {
  for (const DType& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DType* dtype_by_descr(std::string descr) {
  if (!descr.empty() && descr[0] == '=') descr[0] = '<';  // native order is little-endian here
  if (descr.size() == 3 && descr[0] == '<' && descr[2] == '1') descr[0] = '|';
  for (const DType& d : kDTypes)
    if (descr == d.descr) return &d;
  return nullptr;
}

const DType* dtype_by_dl(DLDataType t) {
  for (const DType& d : kDTypes)
    if (d.dl.code == t.code && d.dl.bits == t.bits && t.lanes == 1) return &d;
  return nullptr;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- io.txt -----------------------------------------------------------------------------
struct Spec {
  std::string name, file;
  const DType* dtype;
  std::vector<int64_t> shape;
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep)) parts.push_back(cur);
  if (!s.empty() && s.back() == sep) parts.push_back("");
  return parts;
}

void read_io(const std::string& path, std::vector<Spec>* inputs, std::vector<Spec>* outputs) {
  std::ifstream in(path);
  if (!in) throw Fail("cannot read " + path + " (is this an hwcc bundle?)");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> f = split(line, '\t');
    if (f.size() != 5 || (f[0] != "input" && f[0] != "output"))
      throw Fail("malformed line in " + path + ": " + line);
    Spec s{f[1], f[2], dtype_by_name(f[3]), {}};
    if (!s.dtype) throw Fail("unsupported dtype '" + f[3] + "' in " + path);
    if (!f[4].empty())
      for (const std::string& d : split(f[4], ',')) s.shape.push_back(std::stoll(d));
    (f[0] == "input" ? inputs : outputs)->push_back(s);
  }
}

// ---- .npy -------------------------------------------------------------------------------
std::string header_value(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) return "";
  size_t colon = header.find(':', k);
  size_t start = header.find_first_not_of(" ", colon + 1);
  if (header[start] == '(') return header.substr(start, header.find(')', start) - start + 1);
  size_t end = header.find_first_of(",}", start);
  std::string v = header.substr(start, end - start);
  v.erase(std::remove(v.begin(), v.end(), '\''), v.end());
  v.erase(v.find_last_not_of(" ") + 1);
  return v;
}

struct Npy {
  const DType* dtype = nullptr;
  std::vector<int64_t> shape;
  std::vector<char> data;
};

Npy read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Fail(path + " not found");
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw Fail(path + " is not a .npy file");
  uint32_t hlen = 0;
  unsigned char b[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(b), magic[6] == 1 ? 2 : 4);
  hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  std::string header(hlen, '\0');
  if (!in.read(&header[0], hlen)) throw Fail(path + ": truncated .npy header");
  Npy npy;
  std::string descr = header_value(header, "descr");
  npy.dtype = dtype_by_descr(descr);
  if (!npy.dtype) throw Fail(path + ": unsupported .npy dtype '" + descr + "'");
  if (header_value(header, "fortran_order") == "True")
    throw Fail(path + ": Fortran-ordered arrays are not supported; save a C-ordered array");
  std::string shape = header_value(header, "shape");
  for (const std::string& d : split(shape.substr(1, shape.size() - 2), ',')) {
    if (d.find_first_not_of(" ") != std::string::npos) npy.shape.push_back(std::stoll(d));
  }
  size_t nbytes = size_t(numel(npy.shape)) * (npy.dtype->dl.bits / 8);
  npy.data.resize(nbytes);
  if (nbytes && !in.read(npy.data.data(), nbytes))
    throw Fail(path + ": file is shorter than its shape " + shape_str(npy.shape) + " needs");
  return npy;
}

void write_npy(const std::string& path, const DType* dtype, const std::vector<int64_t>& shape,
               const std::vector<char>& data) {
  std::string sh = "(";
  for (size_t i = 0; i < shape.size(); ++i) sh += std::to_string(shape[i]) + ",";
  if (shape.size() > 1) sh.pop_back();  // "(3,)" for 1-d, "(2,3)" otherwise, "()" for 0-d
  sh += ")";
  std::string header = std::string("{'descr': '") + dtype->descr +
                       "', 'fortran_order': False, 'shape': " + sh + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Fail("cannot write " + path);
  uint16_t hlen = uint16_t(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.put(char(hlen & 0xff)).put(char(hlen >> 8));
  out << header;
  out.write(data.data(), std::streamsize(data.size()));
  if (!out) throw Fail("cannot write " + path);
}

// ---- tensors ----------------------------------------------------------------------------
// Host memory for input tensors, 64-byte aligned as TVM's kernels expect.
struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = std::max<size_t>(64, (ffi::GetDataSize(*t) + 63) / 64 * 64);
    t->data = std::aligned_alloc(64, bytes);
    if (!t->data) throw Fail("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// The bytes of a compact CPU tensor.
const char* tensor_bytes(const DLTensor* t) {
  if (t->device.device_type != kDLCPU) throw Fail("the model returned a tensor not on the CPU");
  int64_t expected = 1;
  for (int i = t->ndim - 1; t->strides && i >= 0; --i) {
    if (t->shape[i] != 1 && t->strides[i] != expected)
      throw Fail("the model returned a non-contiguous tensor");
    expected *= t->shape[i];
  }
  return static_cast<const char*>(t->data) + t->byte_offset;
}

// ---- outputs ----------------------------------------------------------------------------
void flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.as<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) flatten(item, out);
  } else {
    throw Fail("the model returned a value of type " + value.GetTypeKey() + ", not a tensor");
  }
}

std::string dir_of_executable(const char* argv0) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  std::string exe = n > 0 ? std::string(buf, size_t(n)) : std::string(argv0);
  size_t slash = exe.rfind('/');
  return slash == std::string::npos ? "." : exe.substr(0, slash);
}

struct Options {
  std::string inputs = ".", outputs = ".";
  int repeat = 0, threads = 0;
};

int parse_int(const std::string& flag, const char* v) {
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*v == '\0' || *end != '\0' || x < 1 || x > 1000000)
    throw std::invalid_argument(flag + " needs a positive integer, got '" + v + "'");
  return int(x);
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::printf(
          "usage: hwcc_run [--inputs DIR] [--outputs DIR] [--repeat N] [--threads N]\n"
          "Reads <input>.npy from --inputs (default .), writes <output>.npy to --outputs\n"
          "(default .); --repeat N times N runs; tensors are listed in io.txt.\n");
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument("unknown or incomplete option '" + a + "'");
    const char* v = argv[++i];
    if (a == "--inputs") o.inputs = v;
    else if (a == "--outputs") o.outputs = v;
    else if (a == "--repeat") o.repeat = parse_int(a, v);
    else if (a == "--threads") o.threads = parse_int(a, v);
    else throw std::invalid_argument("unknown option '" + a + "'");
  }
  return o;
}

std::string first_line(const std::string& s) {
  std::string line = s.substr(0, s.find('\n'));
  return line.empty() ? s : line;
}

// ---- CPU features -----------------------------------------------------------------------
// Whether this CPU (and the kernel, for register state) supports an LLVM feature; -1 for a
// name the runner cannot check (it is then assumed present: hwcc's targets accept only the
// names below, so that means a bundle from a newer hwcc).
int cpu_has(const std::string& feature) {
#if defined(__x86_64__)
  // GCC >= 12 and clang know these names; libgcc reads cpuid and XCR0 (AVX/AVX-512/AMX
  // state enabled by the OS), and cpuid is what qemu-user emulates for -cpu Haswell.
  __builtin_cpu_init();
  struct Check { const char* llvm; bool (*has)(); };
#define HWCC_X86(llvm, gcc) {llvm, [] { return __builtin_cpu_supports(gcc) != 0; }}
  static const Check kX86[] = {
      HWCC_X86("sse4.2", "sse4.2"),         HWCC_X86("avx", "avx"),
      HWCC_X86("avx2", "avx2"),             HWCC_X86("fma", "fma"),
      HWCC_X86("f16c", "f16c"),             HWCC_X86("avx512f", "avx512f"),
      HWCC_X86("avx512bw", "avx512bw"),     HWCC_X86("avx512dq", "avx512dq"),
      HWCC_X86("avx512vl", "avx512vl"),     HWCC_X86("avx512vnni", "avx512vnni"),
      HWCC_X86("avxvnni", "avxvnni"),       HWCC_X86("avx512bf16", "avx512bf16"),
      HWCC_X86("avx512fp16", "avx512fp16"), HWCC_X86("amx-int8", "amx-int8"),
  };
#undef HWCC_X86
  for (const Check& c : kX86)
    if (feature == c.llvm) return c.has() ? 1 : 0;
  return -1;
#elif defined(__aarch64__)
  // The kernel's hwcaps (bit values of <asm/hwcap.h>, spelled out for older headers).
  struct Check { const char* llvm; unsigned long at; unsigned long bit; };
  static const Check kArm[] = {
      {"neon", AT_HWCAP, 1ul << 1},      {"vfp4", AT_HWCAP, 1ul << 0},
      {"fullfp16", AT_HWCAP, 1ul << 10}, {"dotprod", AT_HWCAP, 1ul << 20},
      {"sve", AT_HWCAP, 1ul << 22},      {"sve2", AT_HWCAP2, 1ul << 1},
      {"i8mm", AT_HWCAP2, 1ul << 13},    {"bf16", AT_HWCAP2, 1ul << 14},
  };
  for (const Check& c : kArm)
    if (feature == c.llvm) return (getauxval(c.at) & c.bit) ? 1 : 0;
  return -1;
#else
  (void)feature;
  return -1;
#endif
}

// Refuse a module built for CPU features this CPU lacks, naming them (cpu.txt; a bundle
// without it is not checked).
void check_cpu(const std::string& bundle) {
  std::ifstream in(bundle + "/cpu.txt");
  if (!in) return;
  std::string line, target = "?", missing;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> f = split(line, '\t');
    if (f.size() != 2) throw Fail("malformed line in " + bundle + "/cpu.txt: " + line);
    if (f[0] == "target") target = f[1];
    else if (f[0] == "feature" && cpu_has(f[1]) == 0) missing += (missing.empty() ? "" : ", ") + f[1];
  }
#if defined(__aarch64__)
  const char* portable = "aarch64-linux-gnu -mattr=+neon";
#else
  const char* portable = "x86_64-linux-gnu -mattr=+avx2,+fma";
#endif
  if (!missing.empty())
    throw Fail("this CPU lacks " + missing + ", which module.so was built for (" + target +
               "); bundle an artifact compiled for this CPU (-t host) or a portable one (-t \"" +
               portable + "\")");
}

int run(const Options& opt, const std::string& bundle) {
  check_cpu(bundle);  // before module.so is loaded: a missing instruction is a SIGILL
  // TVM's thread pool reads TVM_NUM_THREADS when it starts; default to every core, since
  // the runtime would otherwise use half of them.
  if (opt.threads > 0) {
    setenv("TVM_NUM_THREADS", std::to_string(opt.threads).c_str(), 1);
  } else if (!std::getenv("TVM_NUM_THREADS")) {
    unsigned n = std::max(1u, std::thread::hardware_concurrency());
    setenv("TVM_NUM_THREADS", std::to_string(n).c_str(), 1);
  }
  std::vector<Spec> in_specs, out_specs;
  read_io(bundle + "/io.txt", &in_specs, &out_specs);

  // Inputs are read and checked before the module is loaded: mistakes are reported fast.
  DLDevice cpu{kDLCPU, 0};
  std::vector<ffi::Tensor> inputs;
  for (const Spec& s : in_specs) {
    std::string path = opt.inputs + "/" + s.file + ".npy";
    Npy npy;
    try {
      npy = read_npy(path);
    } catch (const Fail& e) {
      throw Fail("input '" + s.name + "': " + e.what());
    }
    if (npy.dtype != s.dtype)
      throw Fail("input '" + s.name + "' (" + path + ") must have dtype " + s.dtype->name +
                 "; got " + npy.dtype->name);
    if (npy.shape != s.shape)
      throw Fail("input '" + s.name + "' (" + path + ") must have shape " +
                 shape_str(s.shape) + "; got " + shape_str(npy.shape));
    ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(s.shape), s.dtype->dl, cpu);
    std::memcpy(t.GetDLTensorPtr()->data, npy.data.data(), npy.data.size());
    inputs.push_back(t);
  }

  // The Relax VM, as tvm.runtime.vm.VirtualMachine sets it up: load the executable, then
  // initialise one CPU device with the pooled allocator (2).
  ffi::Module lib = ffi::Module::LoadFromFile(bundle + "/module.so");
  auto load = lib->GetFunction("vm_load_executable", true);
  if (!load) throw Fail(bundle + "/module.so is not a Relax VM module");
  ffi::Module vm = (*load)().cast<ffi::Module>();
  (*vm->GetFunction("vm_initialization", true))(int(kDLCPU), 0, 2);
  ffi::Optional<ffi::Function> found = vm->GetFunction("main", true);
  if (!found) throw Fail("the module has no 'main' function");
  ffi::Function main_fn = *found;

  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  auto invoke = [&]() {
    ffi::Any rv;
    main_fn.CallPacked(args.data(), int32_t(args.size()), &rv);
    return rv;
  };
  std::vector<ffi::Tensor> results;
  flatten(invoke(), &results);
  if (results.size() != out_specs.size())
    throw Fail("the model returned " + std::to_string(results.size()) + " outputs; io.txt lists " +
               std::to_string(out_specs.size()));

  mkdir(opt.outputs.c_str(), 0755);  // fine if it exists; a failure shows at write time
  for (size_t i = 0; i < results.size(); ++i) {
    const Spec& s = out_specs[i];
    const DLTensor* t = results[i].GetDLTensorPtr();
    std::vector<int64_t> shape(t->shape, t->shape + t->ndim);
    const DType* dt = dtype_by_dl(t->dtype);
    if (dt != s.dtype || shape != s.shape)
      throw Fail("output '" + s.name + "' is " + (dt ? dt->name : "?") + " " + shape_str(shape) +
                 "; io.txt says " + s.dtype->name + " " + shape_str(s.shape));
    const char* bytes = tensor_bytes(t);
    std::vector<char> data(bytes, bytes + size_t(numel(shape)) * (dt->dl.bits / 8));
    write_npy(opt.outputs + "/" + s.file + ".npy", dt, shape, data);
  }

  if (opt.repeat > 0) {
    std::vector<double> ms;
    for (int r = 0; r < opt.repeat; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      invoke();
      auto t1 = std::chrono::steady_clock::now();
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    size_t n = sorted.size();
    double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    double mean = 0;
    for (double x : ms) mean += x / double(n);
    std::printf("latency: median %.4f ms, mean %.4f ms, min %.4f ms, max %.4f ms "
                "over %zu runs, TVM_NUM_THREADS=%s\n",
                median, mean, sorted.front(), sorted.back(), n, std::getenv("TVM_NUM_THREADS"));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  try {
    opt = parse_args(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hwcc_run: error: %s (see --help)\n", e.what());
    return 2;
  }
  try {
    return run(opt, dir_of_executable(argv[0]));
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "hwcc_run: error: %s: %s\n", e.kind().c_str(),
                 first_line(e.message()).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hwcc_run: error: %s\n", first_line(e.what()).c_str());
  }
  return 1;
}
