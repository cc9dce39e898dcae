//! Compose files in, compose and Kubernetes manifests out. Pure text transformations:
//! the CLI reads and writes the files.
//!
//! Invariant: no secret value crosses this crate. Imports keep env-file variables as
//! `${VAR}`; exports write only the config's templates (`${VAR}`, Secret references).

pub mod export;
pub mod import;

pub use import::{ImportError, Imported, Input, import, service_env_files};

/// `b` in the largest binary unit that divides it exactly (`512MiB`, `1Gi`...).
pub(crate) fn binary_size(b: u64, units: [&str; 3], bytes: &str) -> String {
    for (unit, size) in units.iter().zip([1u64 << 30, 1 << 20, 1 << 10]) {
        if b >= size && b.is_multiple_of(size) {
            return format!("{}{unit}", b / size);
        }
    }
    format!("{b}{bytes}")
}
