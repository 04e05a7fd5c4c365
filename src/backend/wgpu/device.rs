//! The wgpu device and its one pending command encoder. Ops record their dispatches and copies
//! into the encoder; it is submitted every few dozen dispatches and when the host needs data
//! back, so the GPU works while the host records. Consecutive dispatches share one compute
//! pass, and their parameters travel in the command stream as immediates (push constants):
//! per-dispatch passes and buffers cost more host time than a small model's kernels take on a
//! fast GPU. For the same reason bind groups are cached: a decode step binds the same buffers
//! as the step before it.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, mpsc};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

pub(super) fn backend_error(reason: impl Into<String>) -> Error {
    Error::Backend {
        backend: "wgpu",
        reason: reason.into(),
    }
}

/// A compute pipeline and its bind group layout (derived from the shader).
#[derive(Clone)]
pub(super) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Most workgroups one grid dimension may hold.
const MAX_GROUPS_PER_DIM: u32 = 65535;

/// Dispatches recorded before they are submitted, so that the GPU runs the start of a forward
/// pass while the host records the rest (measured on the H100: 32 cut SmolLM2's decode from
/// 7.3 to 4.8 ms per token against one submission per pass).
const DISPATCHES_PER_SUBMIT: usize = 32;

/// Commands recorded since the last submission.
struct Pending {
    /// The open compute pass; a copy closes it (copies are recorded outside passes). Declared
    /// first so that it is dropped, and so ended, before the encoder.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: wgpu::CommandEncoder,
    dispatches: usize,
}

/// A dispatch recorded later than asked, so that the op after it may replace it with a fused
/// dispatch of its own: each dispatch costs the GPU several microseconds however small (H100,
/// Vulkan), and a decode step's attention ends with a small one. Recording anything else
/// records it first, so results never depend on whether it was fused.
struct Deferred {
    kernel: Kernel,
    params: Vec<u32>,
    buffers: Vec<(u32, wgpu::Buffer)>,
    groups: usize,
    /// The buffer the dispatch writes, which a fusing op reads.
    target: wgpu::Buffer,
    /// What a fusing op needs to know of the dispatch.
    note: Box<dyn Any + Send>,
}

/// What makes a bind group: the kernel's layout and the buffers at their bindings. The key holds
/// the buffers, so their ids stay unique while cached.
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    layout: wgpu::BindGroupLayout,
    buffers: Vec<(u32, wgpu::Buffer)>,
}

/// Bind groups by what they bind, each with whether it was used since the last sweep.
#[derive(Default)]
struct BindGroups {
    groups: HashMap<BindKey, (wgpu::BindGroup, bool)>,
}

impl BindGroups {
    /// Drops the bind groups unused since the last sweep (and so the buffers only they hold).
    fn sweep(&mut self) {
        self.groups.retain(|_, (_, used)| std::mem::take(used));
    }
}

pub(super) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pending: RefCell<Option<Pending>>,
    bind_groups: RefCell<BindGroups>,
    deferred: RefCell<Option<Deferred>>,
    /// The first error the device reported since the last check: wgpu reports validation and
    /// out-of-memory errors to a callback (which panics by default) rather than to the caller.
    error: Arc<Mutex<Option<String>>>,
}

/// Picks the adapter at `index` in wgpu's list, or the high-performance one by default.
pub(super) fn adapter(index: Option<usize>) -> Result<wgpu::Adapter> {
    if wgpu::Instance::enabled_backend_features().is_empty() {
        return Err(backend_error(
            "no GPU adapter found: this build has no wgpu backend for the platform",
        ));
    }
    let instance = compute_instance();
    match index {
        Some(i) => {
            let mut adapters =
                pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
            if i >= adapters.len() {
                return Err(backend_error(format!(
                    "no GPU adapter found at index {i} ({} adapters)",
                    adapters.len()
                )));
            }
            Ok(adapters.swap_remove(i))
        }
        None => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| backend_error(format!("no GPU adapter found ({e})"))),
    }
}

/// An instance for compute only. On Linux and the BSDs, wgpu's Vulkan instance turns on the
/// X11 and Wayland surface extensions, and Mesa's device-select layer (installed with Mesa's
/// Vulkan drivers, lavapipe included) reacts to the Wayland one by connecting to a Wayland
/// display while it lists the GPUs: with no display, libwayland prints "error:
/// XDG_RUNTIME_DIR is invalid or not set" to the host program's stderr. Without the window
/// system extensions nothing tries to connect; keyformer never presents to a window.
fn compute_instance() -> wgpu::Instance {
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    #[cfg(all(
        unix,
        not(target_os = "macos"),
        not(target_os = "ios"),
        not(target_os = "android")
    ))]
    if desc.backends.contains(wgpu::Backends::VULKAN)
        && let Some(instance) = vulkan_without_window_system(&desc)
    {
        return instance;
    }
    wgpu::Instance::new(desc)
}

/// wgpu's Vulkan instance less the X11 (xlib, xcb) and Wayland surface extensions, or None
/// where Vulkan cannot be loaded (then wgpu's own instance reports that as it always has).
#[cfg(all(
    unix,
    not(target_os = "macos"),
    not(target_os = "ios"),
    not(target_os = "android")
))]
fn vulkan_without_window_system(desc: &wgpu::InstanceDescriptor) -> Option<wgpu::Instance> {
    use wgpu::hal;
    const WINDOW_SYSTEMS: [&std::ffi::CStr; 3] = [
        c"VK_KHR_xlib_surface",
        c"VK_KHR_xcb_surface",
        c"VK_KHR_wayland_surface",
    ];
    let hal_desc = hal::InstanceDescriptor {
        name: "keyformer",
        flags: desc.flags,
        memory_budget_thresholds: desc.memory_budget_thresholds,
        backend_options: desc.backend_options.clone(),
        telemetry: None,
        display: None,
    };
    let without_window_systems: Box<hal::vulkan::CreateInstanceCallback> = Box::new(|args| {
        args.extensions.retain(|e| !WINDOW_SYSTEMS.contains(e));
    });
    // SAFETY: wgpu-hal asks callbacks not to remove extensions, because it assumes that those
    // it found are enabled. It uses these three only to create a surface from an X11 or
    // Wayland window, where it checks for them first and returns an error without them; this
    // instance never creates a surface.
    let instance = unsafe {
        hal::vulkan::Instance::init_with_callback(&hal_desc, Some(without_window_systems))
    };
    let instance = instance.ok()?;
    // SAFETY: a Vulkan instance just created by wgpu-hal, handed over to wgpu, which owns it.
    Some(unsafe { wgpu::Instance::from_hal::<hal::api::Vulkan>(instance) })
}

impl Gpu {
    /// Opens a device with `features` and the adapter's own limits (large models need more
    /// than the portable defaults).
    pub fn open(adapter: &wgpu::Adapter, features: wgpu::Features) -> Result<Gpu> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let experimental = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            // SAFETY: wgpu marks cooperative matrices experimental; the one kernel that uses
            // them is checked against the CPU on an adapter that has them (tests/wgpu.rs).
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("keyformer"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: experimental,
            ..Default::default()
        }))
        .map_err(|e| backend_error(format!("opening {}: {e}", info.name)))?;
        let error = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&error);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut first = sink.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| e.to_string());
        }));
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            pending: RefCell::new(None),
            bind_groups: RefCell::default(),
            deferred: RefCell::new(None),
            error,
        })
    }

    /// Returns (and clears) an error the device reported since the last check.
    pub fn check(&self) -> Result<()> {
        let mut first = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match first.take() {
            Some(e) => Err(backend_error(e)),
            None => Ok(()),
        }
    }

    /// The most bytes one buffer bound to a kernel may hold.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    fn check_size(&self, bytes: u64, what: &str) -> Result<()> {
        let max = self.max_binding();
        if bytes > max {
            return Err(backend_error(format!(
                "{what} needs {bytes} bytes, more than the {max} one buffer may hold on {}",
                self.info.name
            )));
        }
        Ok(())
    }

    /// A zeroed storage buffer (wgpu zero-initialises new buffers) of at least `bytes`.
    pub fn buffer(&self, bytes: u64, what: &str) -> Result<wgpu::Buffer> {
        self.check_size(bytes, what)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: binding_size(bytes),
            usage: storage_usage(),
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `contents`.
    pub fn buffer_with(&self, contents: &[u8], what: &str) -> Result<wgpu::Buffer> {
        self.check_size(contents.len() as u64, what)?;
        let mut padded = contents.to_vec();
        padded.resize(binding_size(contents.len() as u64) as usize, 0);
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(what),
                contents: &padded,
                usage: storage_usage(),
            }))
    }

    fn pending<R>(&self, f: impl FnOnce(&mut Pending) -> R) -> R {
        let mut pending = self.pending.borrow_mut();
        let pending = pending.get_or_insert_with(|| Pending {
            pass: None,
            encoder: self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default()),
            dispatches: 0,
        });
        f(pending)
    }

    /// One dispatch's parameters as immediates, checked against the device's limit.
    fn immediates<'a>(&self, words: &'a [u32]) -> Result<&'a [u8]> {
        let bytes: &[u8] = bytemuck::cast_slice(words);
        let limit = self.limits.max_immediate_size as usize;
        if bytes.len() > limit {
            return Err(backend_error(format!(
                "{} bytes of dispatch parameters, more than the {limit} bytes of immediates {} takes",
                bytes.len(),
                self.info.name
            )));
        }
        Ok(bytes)
    }

    /// The bind group of `kernel` with `buffers` at their bindings: a cached one where the same
    /// were bound before, else a new one.
    fn bind_group(&self, kernel: &Kernel, buffers: &[(u32, &wgpu::Buffer)]) -> wgpu::BindGroup {
        let key = BindKey {
            layout: kernel.layout.clone(),
            buffers: buffers.iter().map(|&(i, b)| (i, b.clone())).collect(),
        };
        let mut cache = self.bind_groups.borrow_mut();
        let (group, used) = cache.groups.entry(key).or_insert_with_key(|key| {
            let entries: Vec<wgpu::BindGroupEntry> = key
                .buffers
                .iter()
                .map(|(binding, b)| wgpu::BindGroupEntry {
                    binding: *binding,
                    resource: b.as_entire_binding(),
                })
                .collect();
            let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &kernel.layout,
                entries: &entries,
            });
            (group, false)
        });
        *used = true;
        group.clone()
    }

    /// Records `kernel` over `groups` workgroups with `params` (u32 words, f32 as bits) as its
    /// immediates and `buffers` at their bindings.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: &[u32],
        buffers: &[(u32, &wgpu::Buffer)],
        groups: usize,
    ) -> Result<()> {
        self.run_deferred()?;
        self.record(kernel, params, buffers, groups)
    }

    /// `dispatch`, held back until the next op (see `Deferred`): that op may take it with
    /// `take_deferred` when it reads `target`, and `note` says what it needs to know.
    pub fn defer(
        &self,
        kernel: &Kernel,
        params: &[u32],
        buffers: &[(u32, &wgpu::Buffer)],
        groups: usize,
        (target, note): (&wgpu::Buffer, Box<dyn Any + Send>),
    ) -> Result<()> {
        self.run_deferred()?;
        *self.deferred.borrow_mut() = Some(Deferred {
            kernel: kernel.clone(),
            params: params.to_vec(),
            buffers: buffers.iter().map(|&(i, b)| (i, b.clone())).collect(),
            groups,
            target: target.clone(),
            note,
        });
        Ok(())
    }

    /// The deferred dispatch's note, when that dispatch writes `target` and its note is a T
    /// that `accept` accepts: the caller then records a replacement for it.
    pub fn take_deferred<T: Send + 'static>(
        &self,
        target: &wgpu::Buffer,
        accept: impl FnOnce(&T) -> bool,
    ) -> Option<T> {
        let mut deferred = self.deferred.borrow_mut();
        let d = deferred.as_ref()?;
        if d.target != *target || !d.note.downcast_ref::<T>().is_some_and(accept) {
            return None;
        }
        let note = deferred.take()?.note.downcast::<T>().ok()?;
        Some(*note)
    }

    fn run_deferred(&self) -> Result<()> {
        let Some(d) = self.deferred.borrow_mut().take() else {
            return Ok(());
        };
        let buffers: Vec<(u32, &wgpu::Buffer)> = d.buffers.iter().map(|(i, b)| (*i, b)).collect();
        self.record(&d.kernel, &d.params, &buffers, d.groups)
    }

    fn record(
        &self,
        kernel: &Kernel,
        params: &[u32],
        buffers: &[(u32, &wgpu::Buffer)],
        groups: usize,
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        let (x, y) = grid(groups)?;
        let immediates = self.immediates(params)?;
        let bind_group = self.bind_group(kernel, buffers);
        self.pending(|p| {
            let pass = p.pass.get_or_insert_with(|| {
                p.encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor::default())
                    .forget_lifetime()
            });
            pass.set_pipeline(&kernel.pipeline);
            pass.set_immediates(0, immediates);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(x, y, 1);
            p.dispatches += 1;
        });
        if self.pending(|p| p.dispatches) >= DISPATCHES_PER_SUBMIT {
            self.submit();
        }
        Ok(())
    }

    /// Records a copy of `bytes` (a multiple of 4) between buffers.
    pub fn copy(
        &self,
        src: &wgpu::Buffer,
        src_at: u64,
        dst: &wgpu::Buffer,
        dst_at: u64,
        bytes: u64,
    ) -> Result<()> {
        self.run_deferred()?;
        if bytes > 0 {
            self.pending(|p| {
                p.pass = None;
                p.encoder
                    .copy_buffer_to_buffer(src, src_at, dst, dst_at, bytes)
            });
        }
        Ok(())
    }

    /// Writes `data` at the start of `buffer`. Commands recorded before may still read the old
    /// contents, so they are submitted first (a queue write lands before the next submission).
    pub fn write(&self, buffer: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        self.run_deferred()?;
        self.submit();
        self.queue.write_buffer(buffer, 0, data);
        Ok(())
    }

    /// Submits everything recorded so far.
    pub fn submit(&self) {
        if let Some(Pending { pass, encoder, .. }) = self.pending.borrow_mut().take() {
            drop(pass);
            self.queue.submit([encoder.finish()]);
        }
    }

    /// Runs everything recorded and reads `bytes` of `src` from `offset` back to the host.
    pub fn read(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let size = bytes.next_multiple_of(4).max(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.copy(src, offset, &staging, 0, bytes.next_multiple_of(4))?;
        self.submit();
        // Reads end every step, so bind groups a step did not use are not kept past the next.
        self.bind_groups.borrow_mut().sweep();
        let (tx, rx) = mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            // The receiver waits below; a failed send only means it gave up.
            let _ = tx.send(r);
        });
        // Poll rather than block: a blocking wait wakes late, 2-3% of SmolLM2's decode step on
        // the H100 (CUDA's default synchronisation spins too). Yielding between polls leaves the
        // core to other threads, such as a software renderer's.
        let mapped = loop {
            self.device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| backend_error(format!("waiting for the GPU: {e}")))?;
            match rx.try_recv() {
                Ok(mapped) => break mapped,
                Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(backend_error("the readback was dropped"));
                }
            }
        };
        self.check()?;
        mapped.map_err(|e| backend_error(format!("reading back: {e}")))?;
        let data = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| backend_error(format!("reading back: {e}")))?[..bytes as usize]
            .to_vec();
        staging.unmap();
        Ok(data)
    }
}

/// Buffer sizes: bindings must be a multiple of 4 bytes, and at least one vec4 where a kernel
/// views a buffer as vec4 runs.
fn binding_size(bytes: u64) -> u64 {
    bytes.next_multiple_of(4).max(16)
}

fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

/// Lays `groups` workgroups out on an x-by-y grid; kernels recover the linear number.
fn grid(groups: usize) -> Result<(u32, u32)> {
    let x = groups.min(MAX_GROUPS_PER_DIM as usize);
    let y = groups.div_ceil(x);
    if y > MAX_GROUPS_PER_DIM as usize {
        return Err(backend_error(format!(
            "{groups} workgroups are more than one dispatch can hold"
        )));
    }
    Ok((x as u32, y as u32))
}
