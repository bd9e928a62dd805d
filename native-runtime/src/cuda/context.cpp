// The process's one CUDA device (context.hpp), and the whole GPU's memory as the driver
// sees it. NVML is loaded with dlopen (libnvidia-ml ships with the driver, but its headers
// do not ship with the toolkit, and a runtime without a driver must still start), so the
// few declarations used here are written out below.
#include <dlfcn.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "common/errors.hpp"
#include "cuda/context.hpp"

namespace lora::cuda {

namespace {

// ---- NVML, as declared by nvml.h (NVML API version 2+, the _v2 entry points) --------------
using nvmlReturn_t = int;
constexpr nvmlReturn_t kNvmlSuccess = 0;
struct nvmlDevice_st;
using nvmlDevice_t = nvmlDevice_st*;
struct nvmlMemory_t {  // nvmlMemory_st: bytes
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
using NvmlInitFn = nvmlReturn_t (*)();
using NvmlShutdownFn = nvmlReturn_t (*)();
using NvmlHandleByIndexFn = nvmlReturn_t (*)(unsigned int, nvmlDevice_t*);
using NvmlHandleByPciBusIdFn = nvmlReturn_t (*)(const char*, nvmlDevice_t*);
using NvmlMemoryInfoFn = nvmlReturn_t (*)(nvmlDevice_t, nvmlMemory_t*);

struct Nvml {
  bool ready = false;
  NvmlShutdownFn shutdown = nullptr;
  NvmlHandleByIndexFn handle_by_index = nullptr;  // resolved to check the library is whole
  NvmlHandleByPciBusIdFn handle_by_pci = nullptr;
  NvmlMemoryInfoFn memory_info = nullptr;
  std::unordered_map<int, nvmlDevice_t> handles;  // CUDA device index -> NVML handle
};

std::mutex g_nvml_mu;

void shutdown_nvml();

Nvml& nvml_locked() {
  static Nvml* n = nullptr;
  if (n) return *n;
  n = new Nvml();
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return *n;
  auto init = reinterpret_cast<NvmlInitFn>(dlsym(lib, "nvmlInit_v2"));
  n->shutdown = reinterpret_cast<NvmlShutdownFn>(dlsym(lib, "nvmlShutdown"));
  n->handle_by_index = reinterpret_cast<NvmlHandleByIndexFn>(dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
  n->handle_by_pci = reinterpret_cast<NvmlHandleByPciBusIdFn>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
  n->memory_info = reinterpret_cast<NvmlMemoryInfoFn>(dlsym(lib, "nvmlDeviceGetMemoryInfo"));
  if (!init || !n->shutdown || !n->handle_by_index || !n->handle_by_pci || !n->memory_info) return *n;
  if (init() != kNvmlSuccess) return *n;
  n->ready = true;
  std::atexit(shutdown_nvml);
  return *n;
}

void shutdown_nvml() {
  std::lock_guard<std::mutex> lock(g_nvml_mu);
  Nvml& n = nvml_locked();
  if (n.ready) {
    n.ready = false;
    n.shutdown();
  }
}

// NVML numbers GPUs in PCI order while CUDA (by default) puts the fastest first, and
// CUDA_VISIBLE_DEVICES renumbers CUDA's: the PCI bus id is the one name both agree on.
bool nvml_memory(int device, DeviceMemory* out) {
  std::lock_guard<std::mutex> lock(g_nvml_mu);
  Nvml& n = nvml_locked();
  if (!n.ready) return false;
  nvmlDevice_t handle = nullptr;
  auto it = n.handles.find(device);
  if (it != n.handles.end()) {
    handle = it->second;
  } else {
    char bus_id[64] = {0};
    if (cudaDeviceGetPCIBusId(bus_id, sizeof bus_id, device) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    if (n.handle_by_pci(bus_id, &handle) != kNvmlSuccess) return false;
    n.handles.emplace(device, handle);
  }
  nvmlMemory_t mem{};
  if (n.memory_info(handle, &mem) != kNvmlSuccess) return false;
  out->total = mem.total;
  out->used = mem.used;
  return true;
}

// cudaMemGetInfo answers for the current device; the caller's device is put back.
bool cuda_memory(int device, DeviceMemory* out) {
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  bool ok = false;
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaSetDevice(device) == cudaSuccess && cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    out->total = total_bytes;
    out->used = total_bytes - free_bytes;
    ok = true;
  }
  (void)cudaGetLastError();
  if (previous >= 0 && previous != device) (void)cudaSetDevice(previous);
  return ok;
}

std::mutex g_ctx_mu;
std::unique_ptr<Context> g_ctx;

const char* kDeviceHint = "set compute.device to \"auto\" or \"cpu\", or to \"cuda:N\" for a GPU that `lora-runtime devices` lists as supported.";

}  // namespace

Context& open_device(int device) {
  std::lock_guard<std::mutex> lock(g_ctx_mu);
  if (g_ctx && g_ctx->device == device) return *g_ctx;

  std::string why;
  const auto devices = list_devices(&why);
  const std::string name = "cuda:" + std::to_string(device);
  if (devices.empty()) {
    throw InputError("device", "compute.device is " + name + " but no CUDA GPU can be used: " + why, "",
                     "compute.device", 0, kDeviceHint);
  }
  if (device < 0 || device >= static_cast<int>(devices.size())) {
    throw InputError("device",
                     "compute.device is " + name + " but this machine has " + std::to_string(devices.size()) +
                         " CUDA device(s), cuda:0 to cuda:" + std::to_string(devices.size() - 1),
                     "", "compute.device", 0, kDeviceHint);
  }
  const DeviceInfo& info = devices[device];
  if (!info.supported) {
    throw InputError("device",
                     "compute.device " + name + " (" + info.name + ") cannot be used: its compute capability " +
                         std::to_string(info.cc_major) + "." + std::to_string(info.cc_minor) + " is older than " +
                         std::to_string(kMinComputeMajor) + ".0, the oldest the kernels are built for (bf16 tensor cores)",
                     "", "compute.device", 0, kDeviceHint);
  }
  if (g_ctx) {
    throw std::logic_error("open_device(" + std::to_string(device) + "): cuda:" + std::to_string(g_ctx->device) +
                           " is already open in this process");
  }

  auto ctx = std::make_unique<Context>();
  ctx->device = device;
  ctx->info = info;
  LORA_CUDA_CHECK(cudaSetDevice(device));
  LORA_CUDA_CHECK(cudaGetDeviceProperties(&ctx->prop, device));
  // Non-blocking: neither stream waits for work on the legacy default stream.
  LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
  LORA_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->copy_stream, cudaStreamNonBlocking));
  g_ctx = std::move(ctx);
  return *g_ctx;
}

Context& current() {
  std::lock_guard<std::mutex> lock(g_ctx_mu);
  if (!g_ctx) throw std::logic_error("no CUDA device is open (call lora::cuda::open_device first)");
  return *g_ctx;
}

void synchronize() { LORA_CUDA_CHECK(cudaStreamSynchronize(current().stream)); }

DeviceMemory device_memory(int device) {
  DeviceMemory m;
  if (nvml_memory(device, &m)) return m;
  if (cuda_memory(device, &m)) return m;
  return DeviceMemory{};
}

}  // namespace lora::cuda
