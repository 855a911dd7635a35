//! The ostree stage: the image's tree as a bare ostree repository, commit and deployment,
//! written directly (no libostree, nothing from the image run), indistinguishable to `ostree`
//! and `bootc` from what `bootc install` writes.

pub mod commit;
pub mod composefs;
pub mod deploy;
pub mod gvariant;
pub mod kargs;
pub mod object;
pub mod prepare_root;
pub mod refescape;
pub mod repo;
pub mod selabel;

pub use commit::{commit, convert, CommitInfo};
pub use deploy::{deploy, BootEntry, DeployOptions, Deployment};
pub use repo::{Repo, SYSROOT_CONFIG};
