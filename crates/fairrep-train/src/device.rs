//! Choosing the compute device.
use burn::tensor::{Device, DeviceKind, DeviceType};
use serde::{Deserialize, Serialize};

/// The device asked for in `run.device` or `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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

impl DeviceChoice {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [DeviceChoice; 4] = [Self::Auto, Self::Flex, Self::Ndarray, Self::Wgpu];

    /// The name in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| DeviceError::Unknown(s.to_string()))
    }
}

/// Why a device cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not a device name.
    #[error("unknown device `{0}`: expected auto, flex, ndarray or wgpu")]
    Unknown(String),
    /// `wgpu` was asked for and no adapter answers.
    #[error(
        "--device wgpu: no wgpu adapter is available (no GPU driver, and no software Vulkan such \
         as Mesa's lavapipe: on Debian, `apt-get install mesa-vulkan-drivers`); use --device \
         flex or auto"
    )]
    NoWgpuAdapter,
}

/// The device in use and why it was picked.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    /// The device.
    pub device: Device,
    /// Short name: `flex`, `ndarray` or `wgpu`.
    pub kind: &'static str,
    /// A human sentence: which adapter, and why.
    pub description: String,
}

/// The wgpu adapters with their names and whether a physical card is behind them. Opening
/// the adapters can panic on a machine without any graphics driver; that counts as none.
fn wgpu_adapters() -> Vec<(Device, String, bool)> {
    std::panic::catch_unwind(|| {
        Device::enumerate(DeviceType::Wgpu)
            .into_iter()
            .filter_map(|device| {
                let identity = device.identity()?;
                let physical = identity.physical.is_some();
                Some((device, identity.name, physical))
            })
            .collect::<Vec<_>>()
    })
    .unwrap_or_default()
}

/// A wgpu adapter that is a real GPU (not a CPU / software adapter), with its name.
///
/// cubecl reports the card behind a device as `identity().physical`, `None` for a software
/// rasterizer (lavapipe, llvmpipe, WARP) or a CPU adapter.
pub fn find_gpu() -> Option<(Device, String)> {
    wgpu_adapters()
        .into_iter()
        .find(|(_, _, physical)| *physical)
        .map(|(device, name, _)| (device, name))
}

/// Resolves a [`DeviceChoice`] to a device; `wgpu` without any adapter is an error.
pub fn select_device(choice: DeviceChoice) -> Result<SelectedDevice, DeviceError> {
    Ok(match choice {
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
            let adapters = wgpu_adapters();
            let Some((_, name, _)) = adapters.first() else {
                return Err(DeviceError::NoWgpuAdapter);
            };
            SelectedDevice {
                device: Device::wgpu(DeviceKind::DefaultDevice),
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in DeviceChoice::ALL {
            assert_eq!(c.name().parse::<DeviceChoice>(), Ok(c));
        }
        assert!(
            "cuda"
                .parse::<DeviceChoice>()
                .unwrap_err()
                .to_string()
                .contains("`cuda`")
        );
    }
}
