//! Choosing the compute device.
use burn::tensor::{Device, DeviceKind, DeviceType};
use serde::{Deserialize, Serialize};

/// The device asked for in `run.device` or `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// wgpu on a real GPU adapter if there is one, else Flex.
    #[default]
    Auto,
    /// burn's pure-Rust CPU backend.
    Flex,
    /// burn's (deprecated) ndarray CPU backend.
    Ndarray,
    /// wgpu on its default adapter (which may be a software rasterizer).
    Wgpu,
}

/// The device in use and why it was picked.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    pub device: Device,
    /// Short name: `flex`, `ndarray` or `wgpu`.
    pub kind: &'static str,
    /// A human sentence: which adapter, and why.
    pub description: String,
}

/// A wgpu adapter that is a real GPU (not a CPU / software adapter), with its name.
///
/// cubecl reports the card behind a device as `identity().physical`, `None` for a software
/// rasterizer (lavapipe, llvmpipe, WARP) or a CPU adapter. Opening the adapters can panic on a
/// machine without any graphics driver; that counts as no GPU.
pub fn find_gpu() -> Option<(Device, String)> {
    let found = std::panic::catch_unwind(|| {
        Device::enumerate(DeviceType::Wgpu)
            .into_iter()
            .find_map(|device| {
                let identity = device.identity()?;
                identity.physical.as_ref()?;
                Some((device, identity.name))
            })
    });
    found.ok().flatten()
}

/// Resolves a [`DeviceChoice`] to a device.
pub fn select_device(choice: DeviceChoice) -> SelectedDevice {
    match choice {
        DeviceChoice::Flex => SelectedDevice {
            device: Device::flex(),
            kind: "flex",
            description: "flex (CPU), as requested".into(),
        },
        DeviceChoice::Ndarray => SelectedDevice {
            #[allow(deprecated)]
            device: Device::ndarray(),
            kind: "ndarray",
            description: "ndarray (CPU), as requested".into(),
        },
        DeviceChoice::Wgpu => {
            let device = Device::wgpu(DeviceKind::DefaultDevice);
            let name = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.identity()))
                .ok()
                .flatten()
                .map_or_else(|| "unknown adapter".to_string(), |id| id.name);
            SelectedDevice {
                device,
                kind: "wgpu",
                description: format!("wgpu on {name}, as requested"),
            }
        }
        DeviceChoice::Auto => match find_gpu() {
            Some((device, name)) => SelectedDevice {
                device,
                kind: "wgpu",
                description: format!("wgpu on {name} (auto: a GPU adapter was found)"),
            },
            None => SelectedDevice {
                device: Device::flex(),
                kind: "flex",
                description: "flex (CPU) (auto: no GPU adapter, only CPU/software ones or \
                              none)"
                    .into(),
            },
        },
    }
}
