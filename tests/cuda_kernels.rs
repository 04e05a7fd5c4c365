//! Every CUDA kernel file compiles with NVRTC, for each storage type and for the A100 and H100
//! architectures, whenever libnvrtc can be loaded (CI installs the nvidia-cuda-nvrtc package).

use keyformer::backend::cuda::CudaDtype;
use keyformer::backend::cuda::kernels::{SOURCES, compile};

#[test]
fn every_kernel_compiles_with_nvrtc() {
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!(
            "SKIP every_kernel_compiles_with_nvrtc: libnvrtc not found (install nvidia-cuda-nvrtc and add its lib folder to LD_LIBRARY_PATH)"
        );
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for dtype in [CudaDtype::F16, CudaDtype::Bf16, CudaDtype::F32] {
            for (name, source) in SOURCES {
                if let Err(e) = compile(name, source, arch, dtype) {
                    panic!("{name} for {arch} {}: {e}", dtype.name());
                }
            }
            println!(
                "compiled {} kernel files for {arch} {}",
                SOURCES.len(),
                dtype.name()
            );
        }
    }
}
