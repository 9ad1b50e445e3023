//! The CUDA context, stream and device memory of the backend.
//!
//! Every CUDA library is loaded at run time (cudarc's dynamic loading), and cudarc panics when a
//! library it needs is missing, so [`check_libraries`] runs before the first call into one and
//! turns a missing library into an error.
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Where the CUDA 13 libraries usually live; named in the errors.
const LIB_HINT: &str = "install the NVIDIA driver and CUDA 13 (cuBLAS), or add its lib64 folder to LD_LIBRARY_PATH";

/// Errors (never panics) when the driver or cuBLASLt cannot be loaded.
pub fn check_libraries() -> Result<()> {
    // SAFETY: is_culib_present only tries to dlopen candidate names and drops the handles.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        bail!("no CUDA driver library (libcuda.so) on this machine: {LIB_HINT}");
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        bail!("cuBLASLt (libcublasLt.so.13) not found: {LIB_HINT}");
    }
    Ok(())
}

/// One GPU: its context and the single stream every kernel and GEMM of the backend runs on.
/// A clone shares both (and the allocation count).
#[derive(Clone)]
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    pub compute_capability: (u32, u32),
    /// Bytes of device memory this backend holds now and at most (see [`Gpu::allocated`]).
    mem: Arc<MemCount>,
}

#[derive(Default)]
struct MemCount {
    live: AtomicUsize,
    peak: AtomicUsize,
}

fn driver_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> anyhow::Error + '_ {
    move |e| anyhow!("CUDA {what}: {e:?}")
}

impl Gpu {
    /// Opens GPU `ordinal`. Fails with one clear line where there is no driver, no GPU or no cuBLASLt.
    pub fn new(ordinal: usize) -> Result<Self> {
        check_libraries()?;
        let ctx = CudaContext::new(ordinal).map_err(driver_err("cannot open GPU"))?;
        // Before any allocation: buffers made from here on skip cudarc's per-use events
        // (one stream, ordered by construction; events would also break graph capture).
        // SAFETY: everything of this backend runs on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        // A non-default stream, so that steps can be captured as CUDA graphs.
        let stream = ctx.new_stream().map_err(driver_err("cannot create a stream"))?;
        let name = ctx.name().map_err(driver_err("device name"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err("compute capability"))?;
        if major < 8 {
            bail!("GPU {ordinal} ({name}) has compute capability {major}.{minor}; whisper-trt needs 8.0 or newer");
        }
        Ok(Gpu { ctx, stream, name, compute_capability: (major as u32, minor as u32), mem: Arc::default() })
    }

    /// `bytes` of zeroed device memory.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        // Never zero bytes: a null pointer would be a valid-looking argument.
        let slice = self
            .stream
            .alloc_zeros::<u8>(bytes.max(256))
            .map_err(|e| anyhow!("GPU out of memory? cannot allocate {bytes} bytes: {e:?}"))?;
        let ptr = slice.device_ptr(&self.stream).0;
        let held = bytes.max(256);
        let live = self.mem.live.fetch_add(held, Ordering::Relaxed) + held;
        self.mem.peak.fetch_max(live, Ordering::Relaxed);
        Ok(DeviceBuffer { _slice: slice, ptr, bytes, held, mem: self.mem.clone() })
    }

    /// Device memory allocated through [`Gpu::alloc`] (buffers alive now, and the most alive at
    /// once since the start or [`Gpu::reset_peak`]), in bytes: what whisper-trt itself holds,
    /// without the CUDA context, cuBLASLt's own workspace or allocator slack, which
    /// [`Gpu::mem_info`] (the driver's view) includes.
    pub fn allocated(&self) -> (usize, usize) {
        (self.mem.live.load(Ordering::Relaxed), self.mem.peak.load(Ordering::Relaxed))
    }

    /// Starts the peak of [`Gpu::allocated`] again from what is alive now.
    pub fn reset_peak(&self) {
        self.mem.peak.store(self.mem.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// A device copy of `data`.
    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<DeviceBuffer> {
        let buf = self.alloc(std::mem::size_of_val(data))?;
        self.copy_to(&buf, 0, data)?;
        Ok(buf)
    }

    /// Copies `data` into `buf` at byte `offset`.
    pub fn copy_to<T: Copy>(&self, buf: &DeviceBuffer, offset: usize, data: &[T]) -> Result<()> {
        let n = std::mem::size_of_val(data);
        if offset + n > buf.bytes {
            bail!("internal: copy of {n} bytes at {offset} overflows a {}-byte device buffer", buf.bytes);
        }
        if n == 0 {
            return Ok(());
        }
        // SAFETY: the destination range lies inside `buf`; a pageable source is staged before
        // the call returns, so `data` may go away afterwards.
        unsafe { cudarc::driver::result::memcpy_htod_async(buf.ptr + offset as u64, data, self.stream.cu_stream()) }
            .map_err(driver_err("host to device copy"))
    }

    /// Copies `out.len()` values from device address `src` into `out`, waiting for the stream.
    pub fn copy_from<T: Copy>(&self, src: CUdeviceptr, out: &mut [T]) -> Result<()> {
        // SAFETY: the caller passes an address inside a live buffer holding out.len() values.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(out, src, self.stream.cu_stream()) }
            .map_err(driver_err("device to host copy"))?;
        self.sync()
    }

    /// Waits for everything queued; reports an asynchronous kernel error as one line.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("stream failed"))
    }

    /// Zeroes `bytes` bytes at device address `ptr`.
    pub fn memset_zero(&self, ptr: CUdeviceptr, bytes: usize) -> Result<()> {
        // SAFETY: the caller passes a range inside a live buffer.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("memset"))
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(driver_err("memory info")).context("cudaMemGetInfo")
    }
}

/// Device memory that lives as long as this value; kernels get its raw address.
pub struct DeviceBuffer {
    _slice: CudaSlice<u8>,
    ptr: CUdeviceptr,
    bytes: usize,
    held: usize,
    mem: Arc<MemCount>,
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.mem.live.fetch_sub(self.held, Ordering::Relaxed);
    }
}

impl DeviceBuffer {
    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The address of element `index` of a buffer of `T`.
    pub fn at<T>(&self, index: usize) -> CUdeviceptr {
        self.ptr + (index * std::mem::size_of::<T>()) as u64
    }
}
